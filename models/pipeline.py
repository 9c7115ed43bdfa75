"""`ReMoMaskPipeline`: prompts in, motions out. The only place that chains the stages (ARCHITECTURE.md §1).

    pipe = ReMoMaskPipeline.from_checkpoints(mask="runs/mask/demo/checkpoints/best.pt",
                                             residual="runs/residual/demo/checkpoints/best.pt", device="cpu")
    out = pipe(["a person walks forward", "someone jumps"], lengths=[120, 80], seed=0)
    out.joints      # (B, T, J, 3) numpy, metres for HumanML3D; out.lengths frames; out.neighbours retrieval

Built diffusers-style from components already in memory (`tokenizer`, `text_encoder`, `retrieval`, `mask`,
`residual`, `length_estimator`), so tests use tiny random-weight components and users can swap one. One call:
1. the text feature of each distinct prompt is computed once and shared by both transformers;
2. retrieval (the retriever's text path and its database) gives each prompt its nearest training text and motion
   features (R_t, R_m) and the neighbours' ids, captions and scores, returned so users see what retrieval brought;
3. lengths: given (frames, floored to a multiple of 4, inside the dataset's range), or drawn by the length estimator;
4. the masked transformer fills the base layer (RAG classifier-free guidance), the residual transformer the other
   layers, the tokenizer decodes, and the standard inverse turns features into joints.

Randomness. `seed=s` gives item i (prompts × num_samples, prompt-major) its own generator seeded s + i, and every
random draw of that item comes from it (`models.sampling.sample_per_item`), so a batch gives the same motions as
calling the pipeline one prompt at a time with the matching seeds. A `torch.Generator` may be passed instead
(`generator=`): one stream for the whole batch, faster to set up, but not per-item reproducible.

Speed (utils/benchmarks/generate.py, BENCHMARKS.md "Generation (issue #16)"). fp32 (the default) is exact. The
stages named in `bf16_stages` run in bfloat16 (CPU with AMX / avx512_bf16, or CUDA) with
- `precision="bf16"`: the two transformers as bfloat16 copies of their weights (`models.low_precision.Bf16Copy`,
  rebuilt when the fp32 weights change; logits and sampling stay in fp32), text, retrieval and decoding under
  bfloat16 autocast; the fastest. The copies' attention runs `attention_kernel` ("auto": two batched matmuls and
  a softmax on a CPU, `models.attention.matmul_attention`; SDPA on CUDA; or "sdpa" / "matmul");
- `precision="bf16-autocast"`: every stage under bfloat16 autocast (fp32 weights, bf16 matmuls).
bf16 changes the sampled tokens of a seed (near-tied logits flip), within the tolerance the benchmark measures and
states. On a device without native bf16 matmuls (an AVX2-only CPU such as AMD Zen 2; a GPU before compute
capability 8.0) bf16 is emulated and slower than fp32: the pipeline warns (`models.low_precision.bf16_slow_reason`).
`pass_rows` ("auto": 8 on a CPU) runs each transformer pass over slices of that many rows of the doubled
guidance batch (the same tokens; cache locality). `pad_to` pads the token map to a fixed number of steps (static
shapes for torch.compile / CUDA graphs); with per-item seeds the tokens do not change. `pipe.compile()` compiles the
transformers' blocks and heads with torch.compile on such static shapes (CUDA graphs on CUDA).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from datasets.registry import dataset_facts
from models.attention import KERNELS, use_attention_kernel
from models.low_precision import Bf16Copy, bf16_slow_reason
from models.text_encoders import check_texts, warn_if_truncated

_MOD = "models/pipeline.py"
PRECISIONS = ("fp32", "bf16", "bf16-autocast")
WEIGHT_STAGES = ("mask", "residual")          # precision "bf16": held as bf16 weight copies
CPU_PASS_ROWS = 8                              # pass_rows "auto" on a CPU (rows_per_pass)
STAGES = ("text", "retrieval", "mask", "residual", "decode")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def compile_transformer(model: nn.Module, mode: str | None, backend: str = "inductor") -> nn.Module:
    """torch.compile each block and the head of a MaskTransformer / ResidualTransformer in place, static shapes
    (`dynamic=False`: one graph per batch size and padded length). Returns `model`."""
    for part in (*model.blocks, model.head):
        part.compile(mode=mode, backend=backend, dynamic=False)
    return model


class PipelineError(ValueError):
    """Bad arguments or components that do not belong together; the message names them."""


@dataclass
class Neighbour:
    """One retrieved training example: its motion id, caption and cosine similarity to the prompt."""
    id: str
    caption: str
    score: float


@dataclass
class MotionOutput:
    """What the pipeline returns for B = len(prompts) · num_samples items (prompt-major).

    features (B, T, D) raw (de-normalised) features, zero past each length; joints (B, T, J, 3) numpy; lengths (B,)
    frames; tokens (B, T', C, Q) the token map (−1 outside the lengths); prompts (B); seeds (B) (None with a shared
    generator); neighbours: per item the retrieved examples (empty without retrieval)."""
    features: Tensor
    joints: np.ndarray
    lengths: Tensor
    tokens: Tensor
    prompts: list[str]
    seeds: list[int | None]
    neighbours: list[list[Neighbour]] = field(default_factory=list)

    def motion(self, i: int) -> np.ndarray:
        """Joints (lengths[i], J, 3) of item i, cut to its length."""
        return self.joints[i, :int(self.lengths[i])]


@dataclass
class Retrieval:
    """The retrieval component: a query encoder (`encode_text(texts) -> (B, 512)`) and its database.

    With `cache=True` each distinct prompt is encoded and queried once per instance (the encoder is in eval mode
    and the database fixed, so the result is a function of the prompt): evaluation replications and
    MultiModality repeats reuse it. `clear_cache()` empties it."""
    encoder: nn.Module
    database: object
    k: int = 1
    cache: bool = True
    _store: dict = field(default_factory=dict, repr=False)

    def clear_cache(self) -> None:
        self._store.clear()

    @torch.no_grad()
    def _query(self, prompts: list[str]):
        return self.database.query(self.encoder.encode_text(prompts).float().cpu(), k=self.k)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]):
        prompts = list(prompts)
        if not self.cache:
            return self._query(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in self._store))
        if missing:
            res = self._query(missing)
            for i, p in enumerate(missing):
                self._store[p] = tuple(x[i] for x in res)
        from models.retrieval_database import RetrievalResult

        rows = [self._store[p] for p in prompts]
        return RetrievalResult(*(torch.stack(col) for col in zip(*rows)))


class ReMoMaskPipeline:
    """Text-to-motion generation with the four stages (module docstring)."""

    def __init__(self, tokenizer, text_encoder: nn.Module, mask: nn.Module, residual: nn.Module,
                 retrieval: Retrieval | None = None, length_estimator: nn.Module | None = None,
                 precision: str = "fp32", bf16_stages: Sequence[str] = STAGES, pad_to: int | None = None,
                 attention_kernel: str = "auto", pass_rows: int | str | None = "auto"):
        if precision not in PRECISIONS:
            raise PipelineError(f"{_MOD}: argument 'precision' must be one of {PRECISIONS}, got {precision!r}")
        if attention_kernel not in ("auto", *KERNELS):
            raise PipelineError(f"{_MOD}: argument 'attention_kernel' must be 'auto' or one of {KERNELS}, got "
                                f"{attention_kernel!r}")
        if not (pass_rows is None or pass_rows == "auto" or (isinstance(pass_rows, int) and pass_rows >= 1)):
            raise PipelineError(f"{_MOD}: argument 'pass_rows' must be 'auto', None or an integer >= 1, got "
                                f"{pass_rows!r}")
        self.attention_kernel, self.pass_rows = attention_kernel, pass_rows
        unknown = [s for s in bf16_stages if s not in STAGES]
        if unknown:
            raise PipelineError(f"{_MOD}: argument 'bf16_stages' must name stages of {STAGES}, got {unknown}")
        self.precision, self.bf16_stages, self.pad_to = precision, tuple(bf16_stages), pad_to
        self.compile_options: dict | None = None          # set by `compile`
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.mask, self.residual = mask.eval(), residual.eval()
        self._bf16_copies = {s: Bf16Copy(m, prepare=self.prepare_bf16_copy)
                             for s, m in (("mask", self.mask), ("residual", self.residual))}
        self.retrieval, self.length_estimator = retrieval, length_estimator
        if length_estimator is not None:
            length_estimator.eval()
        self.dataset = tokenizer.dataset
        self.facts = dataset_facts(self.dataset)
        self._check_components()
        slow = bf16_slow_reason(self.device) if precision != "fp32" and self.bf16_stages else None
        if slow:
            warnings.warn(f"{_MOD}: precision {precision!r} on {self.device}: {slow}; precision 'fp32' is the fast "
                          f"choice here", stacklevel=2)

    # ---- construction ---------------------------------------------------------------------------------------------
    def _check_components(self) -> None:
        tok, m, r = self.tokenizer, self.mask.cfg, self.residual.cfg
        for name, cfg in (("mask", m), ("residual", r)):
            if cfg.num_columns != tok.num_columns or list(cfg.codebook_sizes) != list(tok.codebook_sizes):
                raise PipelineError(f"{_MOD}: the {name} transformer expects {cfg.num_columns} columns with codebooks "
                                    f"{list(cfg.codebook_sizes)}, the tokenizer has {tok.num_columns} with "
                                    f"{tok.codebook_sizes}")
        if getattr(r, "num_quantizers", tok.num_quantizers) != tok.num_quantizers:
            raise PipelineError(f"{_MOD}: the residual transformer predicts {r.num_quantizers} levels, the tokenizer "
                                f"has {tok.num_quantizers}")
        width = getattr(self.text_encoder, "out_dim", None)
        for name, cfg in (("mask", m), ("residual", r)):
            if width is not None and cfg.text_dim != width:
                raise PipelineError(f"{_MOD}: the {name} transformer expects {cfg.text_dim}-d text features, the "
                                    f"text encoder gives {width}")
        est = self.length_estimator
        if est is not None and width is not None and est.cfg.text_dim != width:
            raise PipelineError(f"{_MOD}: the length estimator expects {est.cfg.text_dim}-d text features, the text "
                                f"encoder gives {width}")
        if est is not None and est.cfg.dataset != self.dataset:
            raise PipelineError(f"{_MOD}: the length estimator is for dataset {est.cfg.dataset!r}, the tokenizer for "
                                f"{self.dataset!r}")
        if self.mask.uses_retrieval and self.retrieval is None:
            raise PipelineError(f"{_MOD}: the masked transformer is conditioned on retrieval (ablation "
                                f"{m.ablation!r}) but no retrieval component was given")

    @classmethod
    def from_checkpoints(cls, mask: str | os.PathLike, residual: str | os.PathLike, *,
                         tokenizer: str | os.PathLike | None = None, retriever: str | os.PathLike | None = None,
                         database: str | os.PathLike | None = None,
                         length_estimator: str | os.PathLike | None = None, text_path: str | None = None,
                         device: str | torch.device = "cpu", allow_mismatch: bool = False,
                         precision: str = "fp32", pad_to: int | None = None) -> "ReMoMaskPipeline":
        """Load the two transformers and find the tokenizer and the retrieval through their upstream records
        (explicit paths override). Refuses components that were not trained together, naming the files.
        `precision` / `pad_to`: as in the constructor."""
        from models.pipeline_loading import load_components

        return cls(**load_components(mask, residual, tokenizer=tokenizer, retriever=retriever, database=database,
                                     length_estimator=length_estimator, text_path=text_path, device=device,
                                     allow_mismatch=allow_mismatch), precision=precision, pad_to=pad_to)

    @property
    def device(self) -> torch.device:
        return next(self.mask.parameters()).device

    def _in_bf16(self, stage: str) -> bool:
        return self.precision != "fp32" and stage in self.bf16_stages

    def _bf16_weights(self, stage: str) -> bool:
        """The stage runs as a bf16 weight copy (precision "bf16", a transformer stage among `bf16_stages`)."""
        return self.precision == "bf16" and stage in WEIGHT_STAGES and stage in self.bf16_stages

    def autocast(self, stage: str):
        """The autocast context of one stage: bfloat16 when the stage runs in bf16 and is not held as bf16 weights
        (module docstring), else none."""
        if self._in_bf16(stage) and not self._bf16_weights(stage):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare_bf16_copy(self, module: nn.Module) -> nn.Module:
        """A new bf16 copy's attention kernel: "auto" = "matmul" on a CPU (1.7–1.9× the attention rate of SDPA's
        bf16 flash kernel there, BENCHMARKS.md), SDPA on CUDA (fused kernels)."""
        kernel = self.attention_kernel
        if kernel == "auto":
            kernel = "matmul" if self.device.type == "cpu" else "sdpa"
        module = use_attention_kernel(module, kernel)
        if self.compile_options is not None:             # a copy rebuilt after `compile` is compiled too
            compile_transformer(module, **self.compile_options)
        return module

    def compile(self, mode: str | None = None, *, backend: str = "inductor",
                pad_to: int | None = None) -> "ReMoMaskPipeline":
        """torch.compile the blocks and heads of the two transformers this pipeline runs, on static shapes.

        Args:
            mode: torch.compile mode, one of COMPILE_MODES; None = "reduce-overhead" (CUDA graphs) on CUDA,
                "default" (inductor kernels) on a CPU
            backend: torch.compile backend ("inductor"; "eager" checks the plumbing without code generation)
            pad_to: token steps every call's map is padded to (static shapes); None = keep `self.pad_to`, or the
                dataset's longest motion (pad_length // downsample) when unset
        The bf16 copies (precision "bf16") are compiled, also when rebuilt later; otherwise the fp32 modules are
        compiled in place (a pipeline sharing them runs them compiled too). Each new batch size compiles on its
        first call (seconds on a GPU, a minute or more on a CPU); the tokens are those of the eager modules in fp32
        up to the rounding of fused kernels. Returns self."""
        if mode is not None and mode not in COMPILE_MODES:
            raise PipelineError(f"{_MOD}: argument 'mode' must be None or one of {COMPILE_MODES}, got {mode!r}")
        if mode is None and backend == "inductor":
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        self.compile_options = {"mode": mode if backend == "inductor" else None, "backend": backend}
        if pad_to is not None or self.pad_to is None:
            self.pad_to = pad_to or self.facts.pad_length // self.tokenizer.downsample
        for stage in WEIGHT_STAGES:
            if self._bf16_weights(stage):
                built = self._bf16_copies[stage].cached
                if built is not None:                          # already built: compile it; new ones via prepare
                    compile_transformer(built, **self.compile_options)
            else:
                compile_transformer(self._source(stage), **self.compile_options)
        return self

    def rows_per_pass(self) -> int | None:
        """Network rows per transformer pass: `pass_rows`, "auto" = 8 on a CPU (a guided pass over 64 rows in slices
        of 8 keeps its activations in cache: 1.2× faster in bf16, 1.6× in fp32 at batch 32, BENCHMARKS.md), all at
        once on CUDA."""
        if self.pass_rows == "auto":
            return CPU_PASS_ROWS if self.device.type == "cpu" else None
        return self.pass_rows

    def _source(self, stage: str) -> nn.Module:
        """The fp32 transformer of stage "mask" or "residual"."""
        return {"mask": self.mask, "residual": self.residual}[stage]

    def stage_module(self, stage: str) -> nn.Module:
        """The transformer that runs stage "mask" or "residual": its bfloat16 copy under `precision="bf16"`, else the
        module itself."""
        module = self._source(stage)
        if self._bf16_weights(stage):
            copy = self._bf16_copies[stage]
            if copy.source is not module:                   # the component was swapped after construction
                copy = self._bf16_copies[stage] = Bf16Copy(module.eval(), prepare=self.prepare_bf16_copy)
            return copy.get()
        return module

    # ---- arguments ---------------------------------------------------------------------------------------------------
    def check_lengths(self, lengths: Sequence[int], strict: bool = True) -> Tensor:
        """Frames (B,) inside the dataset's range, floored to a multiple of 4; a one-line PipelineError otherwise.

        `strict=False` accepts [unit_length, pad_length]: the evaluation's ground-truth lengths, whose reference
        crop (len // 4 − 1)·4 can fall below the dataset's minimum (36 frames for a 40-frame HumanML3D motion)."""
        lo, hi, unit = self.facts.min_length, self.facts.pad_length, self.facts.unit_length
        if not strict:
            lo = unit
        out = []
        for v in lengths:
            if isinstance(v, bool) or not float(v).is_integer():
                raise PipelineError(f"{_MOD}: argument 'lengths' must hold whole frame counts, got {v!r}")
            if not lo <= int(v) <= hi:
                raise PipelineError(f"{_MOD}: length {int(v)} frames is outside the {self.facts.title} range "
                                    f"[{lo}, {hi}] ({lo / self.facts.fps:.1f}–{hi / self.facts.fps:.1f} s at "
                                    f"{self.facts.fps:g} fps)")
            out.append(int(v) // unit * unit)
        return torch.tensor(out, dtype=torch.long)

    # ---- generation --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str], lengths: int | Sequence[int] | None = None,
                 num_samples: int = 1, *, steps: int | None = None, guidance_scale: float | None = None,
                 residual_guidance_scale: float | None = None, temperature: float | None = None,
                 topk_ratio: float | None = None, seed: int | Sequence[int] | None = 0,
                 generator: torch.Generator | None = None, length_mode: str = "sample",
                 strict_lengths: bool = True) -> MotionOutput:
        """Generate `num_samples` motions per prompt.

        Args:
            prompts: one string or B_p strings (empty ones are refused)
            lengths: frames, one for all or one per prompt; None = drawn by the length estimator (`length_mode`
                "sample" or "argmax")
            steps, guidance_scale, temperature, topk_ratio: masked-transformer sampling (None = its config's);
            residual_guidance_scale: the residual transformer's (None = its config's, 5)
            seed: item i (prompt-major) uses a generator seeded seed + i (batch = one-by-one), or seed[i] for a
                list of B seeds; ignored when `generator` is given
            strict_lengths: False accepts lengths below the dataset's minimum (down to 4 frames; evaluation)
        Returns:
            MotionOutput with B = B_p · num_samples items.
        """
        prompts = check_texts([prompts] if isinstance(prompts, str) else list(prompts), f"{_MOD}: prompts")
        if num_samples < 1:
            raise PipelineError(f"{_MOD}: argument 'num_samples' must be >= 1, got {num_samples}")
        items = [p for p in prompts for _ in range(num_samples)]
        owner = torch.arange(len(prompts)).repeat_interleave(num_samples)            # item -> prompt index
        device = self.device
        if generator is not None:
            gens, seeds = generator, [None] * len(items)
        elif isinstance(seed, (list, tuple)) or torch.is_tensor(seed):
            seeds = [int(s) for s in seed]
            if len(seeds) != len(items):
                raise PipelineError(f"{_MOD}: argument 'seed' must hold one seed per item ({len(items)}), got "
                                    f"{len(seeds)}")
            gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        else:
            base = 0 if seed is None else int(seed)
            seeds = [base + i for i in range(len(items))]
            gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        # 1. text features, once per distinct prompt (a prompt longer than the encoder reads: truncated, warned)
        warn_if_truncated(self.text_encoder, prompts)
        with self.autocast("text"):
            t = self.text_encoder(list(prompts)).float().to(device)[owner.to(device)]  # (B, D_text)
        # 2. retrieval
        r_t = r_m = None
        neighbours: list[list[Neighbour]] = [[] for _ in items]
        if self.retrieval is not None and self.mask.uses_retrieval:
            with self.autocast("retrieval"):
                res = self.retrieval(prompts)
            r_t, r_m = res.r_t.to(device)[owner.to(device)], res.r_m.to(device)[owner.to(device)]
            db = self.retrieval.database
            per_prompt = [[Neighbour(db.motion_ids[int(j)], db.captions[int(j)], float(s))
                           for j, s in zip(res.indices[p].tolist(), res.scores[p].tolist())]
                          for p in range(len(prompts))]
            neighbours = [per_prompt[int(o)] for o in owner]
        # 3. lengths
        frames = self._lengths(lengths, len(prompts), owner, t, gens, length_mode, strict_lengths)
        steps_t = frames // self.tokenizer.downsample
        # 4. base layer, residual layers, decode
        with self.autocast("mask"):
            base = self._generate_base(t, r_t, r_m, steps_t.to(device), steps=steps, guidance_scale=guidance_scale,
                                       topk_ratio=topk_ratio, temperature=temperature, generator=gens,
                                       pad_to=self.pad_to)
        with self.autocast("residual"):
            tokens = self._generate_residual(base, t, steps_t.to(device), guidance_scale=residual_guidance_scale,
                                             generator=gens, pad_to=self.pad_to)
        with self.autocast("decode"):
            raw = self._decode(tokens, steps_t)                                          # (B, 4T', D) CPU
        valid = torch.arange(raw.shape[1])[None, :] < frames[:, None]
        from datasets.representation import features_to_joints

        joints = np.asarray(features_to_joints(raw, dataset=self.dataset))
        joints = joints * valid.cpu().numpy()[..., None, None]
        return MotionOutput(features=raw, joints=joints, lengths=frames, tokens=tokens.cpu(), prompts=items,
                            seeds=seeds, neighbours=neighbours)

    def _generate_base(self, t: Tensor, r_t: Tensor | None, r_m: Tensor | None, token_steps: Tensor,
                       **options) -> Tensor:
        """The base layer (B, T', C) from `MaskTransformer.generate` (token_steps: lengths in token steps (B,))."""
        return self.stage_module("mask").generate(t, r_t, r_m, token_steps, pass_rows=self.rows_per_pass(), **options)

    def _generate_residual(self, base: Tensor, t: Tensor, token_steps: Tensor, **options) -> Tensor:
        """All layers (B, T', C, Q) from `ResidualTransformer.generate` on the base layer."""
        return self.stage_module("residual").generate(base, t, token_steps, pass_rows=self.rows_per_pass(), **options)

    def _decode(self, tokens: Tensor, steps: Tensor) -> Tensor:
        """Decode each item at its own length (items of equal length together), zero past it: the convolutional
        decoder then never sees another item's padding, so an item decodes the same in any batch."""
        b, tp = tokens.shape[:2]
        down = self.tokenizer.downsample
        raw = torch.zeros(b, tp * down, self.facts.dim)
        for n in torch.unique(steps).tolist():
            rows = (steps == n).nonzero().flatten()
            raw[rows, :n * down] = self.tokenizer.decode(tokens[rows.to(tokens.device), :n]).float().cpu()
        return raw

    def _lengths(self, lengths, num_prompts: int, owner: Tensor, t: Tensor, gens, mode: str,
                 strict: bool = True) -> Tensor:
        if lengths is not None:
            values = [lengths] * num_prompts if isinstance(lengths, (int, np.integer, float)) else list(lengths)
            if len(values) != num_prompts:
                raise PipelineError(f"{_MOD}: argument 'lengths' must hold one length or one per prompt "
                                    f"({num_prompts}), got {len(values)}")
            return self.check_lengths(values, strict)[owner]
        if self.length_estimator is None:
            raise PipelineError(f"{_MOD}: no lengths given and no length estimator loaded; pass lengths (frames) or "
                                f"a length estimator checkpoint")
        if isinstance(gens, (list, tuple)):
            frames = torch.cat([self.length_estimator.predict(t[i:i + 1], mode=mode, generator=g)
                                for i, g in enumerate(gens)])
        else:
            frames = self.length_estimator.predict(t, mode=mode, generator=gens)
        return frames.long().cpu()
