"""Benchmark text-to-motion generation at the paper's sizes: the fast path against its own naive path and against
the machine's matmul throughput.

    python -m utils.benchmarks.generate [--device cpu|cuda] [--batches 1,32] [--repeats 3] [--quick] [--json PATH]

Components (random weights, built with the real classes): RVQVAE2D paper config with the global column (T'×7 map,
6 RVQ levels, 256 × 1024 codebooks), CLIP ViT-B/32 text encoder, DistilBERT-size retriever text tower + a
simulated 72k-row database (24,000 motions × 3 captions), MaskTransformer 6 layers 512-d 8 heads, ResidualTransformer
6 layers 384-d 6 heads. 196 frames, 10 steps, guidance 4 (mask) / 5 (residual), top-k 0.9, per-item seeds.

Paths timed side by side in one run (their repeats interleaved, so load changes hit all of them alike):
- **naive**: cond and uncond as two passes (no batched guidance), the text re-encoded for each transformer with
  no feature cache, the retrieval without cache, fp32, eager;
- **fast fp32**: one doubled batch for guidance, the text encoded once per prompt and shared, fp32 (its tokens are
  checked equal to the naive path's);
- **fast bf16** (pipeline precision "bf16"): the same with the transformers held as bfloat16 weight copies and
  text, retrieval and decoding under bfloat16 autocast (AMX / avx512_bf16 on a CPU; CUDA bf16). Its tokens differ
  from fp32 where near-tied logits flip; the run measures and states the difference (first-pass guided logits,
  token agreement, decoded-feature error for the same tokens, text features, retrieval top-1);
- **fast bf16 autocast** (precision "bf16-autocast", `--no-autocast-path` skips it): every stage under bfloat16
  autocast with the fp32 weights, the bf16 path of earlier versions, timed beside it for the ratio.
- with `--compile`: **fast bf16 + compile**: torch.compile of the transformer blocks and heads on static shapes
  (`pad_to` = 49 token steps), `--compile-mode` default "reduce-overhead" (CUDA graphs) on CUDA and "default"
  (inductor) on the CPU. The CUDA variant is written but was not run on a GPU by the session that wrote it.
Where the device has no native bf16 matmuls (`models.low_precision.bf16_slow_reason`: a CPU without AMX /
AVX-512 BF16 / Arm BF16, a GPU before compute capability 8.0) bf16 is emulated, several times slower than fp32:
the bf16 and compile paths are skipped and the report says why, unless `--force-bf16`.
Caches are cleared before every timed run (prompts are "new"), so text encoding and retrieval are counted.

Each run times text encoding, retrieval, masked generation, residual generation, decoding and the whole pipeline
call (`ReMoMaskPipeline.__call__`, including the conversion to joints); median, min and max over `--repeats` runs
after `--warmup` runs. The machine's own matmul throughput (2048² fp32 and bf16; bf16 at 512² where it is emulated)
is measured in the same run, and the
efficiency of the transformer passes is their FLOPs (counted from the shapes of one pass with
`torch.utils.flop_counter`, attention added analytically) over their time, as a fraction of that throughput.
A scaling table adds time against motion length (64, 128, 196 frames), batch size and database size (10k, 72k,
1M rows). Output: a markdown report on stdout, `--json PATH` for the numbers, `--plot PATH` for a picture
(`utils.benchmarks.plot_generation`).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from models.low_precision import bf16_slow_reason, cpuinfo

_MOD = "utils/benchmarks/generate.py"
STAGES = ("text", "retrieval", "mask", "residual", "decode")
VERBS = ["walks", "runs", "jumps", "waves", "kicks", "turns", "sits", "squats", "crawls", "dances", "bows", "throws"]
HOW = ["slowly", "quickly", "forward", "backward", "in a circle", "to the left", "to the right", "happily"]


class BenchmarkArgError(ValueError):
    """A bad command-line value; main() prints it as one line."""


# ----------------------------------------------------------------------------------------------------------------
# Components
# ----------------------------------------------------------------------------------------------------------------
def prompts_for(batch: int, offset: int = 0) -> list[str]:
    """`batch` distinct captions (so the text encoders see a real batch, not one cached prompt)."""
    out = []
    for i in range(offset, offset + batch):
        v, h = VERBS[i % len(VERBS)], HOW[(i // len(VERBS)) % len(HOW)]
        out.append(f"a person {v} {h} and then stops, take {i}")
    return out


def simulated_database(rows: int, dim: int = 512, captions: int = 3, seed: int = 0, device: str = "cpu"):
    """A RetrievalDatabase of about `rows` rows (rows // captions motions × captions), random unit features.

    Lean on memory at 1M rows: one random (N, D) tensor is handed in as both the text and the motion column (the
    database normalises each into its own copy), so the peak is 3 × N × D floats."""
    from models.retrieval_database import DatabaseMeta, RetrievalDatabase

    entries = max(1, rows // captions)
    n = entries * captions
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, dim, generator=g)
    ids = [f"{i // captions:07d}" for i in range(n)]
    meta = DatabaseMeta(dataset="t2m", feature_dim=263, latent_dim=dim, split="train", data_root="<simulated>",
                        retriever_checkpoint="<none>", retriever_fingerprint="<none>")
    db = RetrievalDatabase(feats, feats, ids, ["a person walks"] * n, [100] * n, meta)
    del feats
    return db.to(device)


def paper_components(device: str = "cpu", db_rows: int = 72000, seed: int = 0) -> dict:
    """The pipeline components at the paper's sizes, random weights (module docstring)."""
    from models import mask_transformer as mt
    from models import residual_transformer as rt
    from models.pipeline import Retrieval
    from models.retrieval_database import RetrievalQueryEncoder
    from models.retriever import RetrieverConfig
    from models.rvq import RVQConfig, RVQVAE2D
    from models.text_encoders import TextEncoderConfig, build_text_encoder_from_config
    from models.tokenizer import MotionTokenizer

    torch.manual_seed(seed)
    rvq = RVQVAE2D(RVQConfig(dropout=0.0))                              # paper config, global column (T'×7)
    tok = MotionTokenizer(model=rvq, mean=torch.zeros(263), std=torch.ones(263), config={}, path="<random>")
    tok.model.to(device)
    text = build_text_encoder_from_config(TextEncoderConfig(name="clip", random_init=True)).to(device)
    enc = RetrievalQueryEncoder(RetrieverConfig(dataset="t2m", text_encoder="distilbert", text_random_init=True,
                                                text_freeze_backbone=False)).to(device).eval()
    db = simulated_database(db_rows, device=device)
    mask = mt.MaskTransformer(mt.MaskTransformerConfig(**mt.token_map_config(rvq), dropout=0.0)).to(device)
    residual = rt.ResidualTransformer(rt.ResidualTransformerConfig(**rt.token_map_config(rvq), dropout=0.0)).to(device)
    return dict(tokenizer=tok, text_encoder=text, mask=mask, residual=residual, retrieval=Retrieval(enc, db))


def tiny_components(device: str = "cpu", db_rows: int = 30, seed: int = 0) -> dict:
    """Tiny components of the same classes (tests and `--tiny` smoke runs): 2-level 16-code tokenizer, 1-layer
    transformers, tiny CLIP and DistilBERT towers."""
    from models import mask_transformer as mt
    from models import residual_transformer as rt
    from models.pipeline import Retrieval
    from models.retrieval_database import RetrievalQueryEncoder
    from models.retriever import RetrieverConfig
    from models.rvq import RVQConfig, RVQVAE2D
    from models.text_encoders import CLIPTextConfig, CLIPTextEncoder
    from models.tokenizer import MotionTokenizer

    torch.manual_seed(seed)
    rvq = RVQVAE2D(RVQConfig(width=32, code_dim=16, nb_code=16, global_branch=True, global_width=32,
                             global_code_dim=16, global_nb_code=16, dropout=0.0, num_quantizers=3))
    tok = MotionTokenizer(model=rvq, mean=torch.zeros(263), std=torch.ones(263), config={}, path="<tiny>")
    tok.model.to(device)
    text = CLIPTextEncoder(CLIPTextConfig.tiny(), random_init=True).to(device)
    rdim = 16
    enc = RetrievalQueryEncoder(RetrieverConfig(text_encoder="distilbert", text_tiny=True, latent_dim=rdim,
                                                part_width=8, layers=1, heads=2, ff_dim=16,
                                                queue_size=16)).to(device).eval()
    db = simulated_database(db_rows, dim=rdim, device=device)
    common = dict(text_dim=text.out_dim, layers=1, heads=2, width=32, ff_dim=64, dropout=0.0, max_tokens=49)
    mask = mt.MaskTransformer(mt.MaskTransformerConfig(**mt.token_map_config(rvq), retrieval_dim=rdim, **common))
    residual = rt.ResidualTransformer(rt.ResidualTransformerConfig(**rt.token_map_config(rvq), embed_dim=8, **common))
    return dict(tokenizer=tok, text_encoder=text, mask=mask.to(device), residual=residual.to(device),
                retrieval=Retrieval(enc, db))


def make_pipeline(components: dict, **options):
    from models.pipeline import ReMoMaskPipeline

    return ReMoMaskPipeline(**components, **options)


def clear_caches(pipe) -> None:
    """Forget every cached text feature and retrieval result (the next call sees 'new' prompts)."""
    for module in (pipe.text_encoder, getattr(pipe.retrieval, "encoder", None)):
        if module is None:
            continue
        for m in module.modules():
            if hasattr(m, "clear_cache"):
                m.clear_cache()
    if pipe.retrieval is not None:
        pipe.retrieval.clear_cache()


# ----------------------------------------------------------------------------------------------------------------
# The naive path (a context manager over a pipeline: no model code changes)
# ----------------------------------------------------------------------------------------------------------------
def two_pass_mask_guidance(model) -> Callable:
    """MaskTransformer.guided_logits with cond and uncond as two separate passes (the naive path)."""
    from models.sampling import guidance_combine

    def guided_logits(tokens, t, r_t=None, r_m=None, pad_mask=None, guidance_scale=None, pass_rows=None):
        s = model.cfg.guidance_scale if guidance_scale is None else guidance_scale
        cond = model.logits(tokens, t, r_t, r_m, pad_mask, drop_condition=False)
        if s == 1:
            return cond
        uncond = model.logits(tokens, t, r_t, r_m, pad_mask, drop_condition=True)
        return guidance_combine(cond, uncond, s)

    return guided_logits


def two_pass_residual_guidance(model) -> Callable:
    """ResidualTransformer.guided_logits with cond and uncond as two separate passes (the naive path)."""
    from models.sampling import guidance_combine

    def guided_logits(tokens, layer, t, pad_mask=None, guidance_scale=None, pass_rows=None):
        s = model.cfg.guidance_scale if guidance_scale is None else guidance_scale
        cond = model.logits(tokens, layer, t, pad_mask, drop_condition=False)
        if s == 1:
            return cond
        uncond = model.logits(tokens, layer, t, pad_mask, drop_condition=True)
        return guidance_combine(cond, uncond, s)

    return guided_logits


@contextlib.contextmanager
def naive_path(pipe, prompts: Sequence[str]):
    """Run `pipe` the naive way inside the block: two-pass guidance in both transformers, the text encoded again
    for the residual transformer (no feature cache), no retrieval cache, fp32. `prompts` are the call's prompts
    (num_samples = 1), which the residual stage re-encodes."""
    mask, residual, text = pipe.mask, pipe.residual, pipe.text_encoder
    saved = dict(precision=pipe.precision, text_cache=getattr(text, "cache", None),
                 retrieval_cache=getattr(pipe.retrieval, "cache", None))
    generate = residual.generate

    def residual_generate(base, t, lengths, **kw):
        t_again = text(list(prompts)).float().to(t.device)                # re-encoded for this stage
        return generate(base, t_again, lengths, **kw)

    mask.guided_logits = two_pass_mask_guidance(mask)
    residual.guided_logits = two_pass_residual_guidance(residual)
    residual.generate = residual_generate
    if hasattr(text, "cache"):
        text.cache = None
    if pipe.retrieval is not None:
        pipe.retrieval.cache = False
    pipe.precision = "fp32"
    try:
        yield pipe
    finally:
        for name in ("guided_logits",):
            mask.__dict__.pop(name, None)
            residual.__dict__.pop(name, None)
        residual.__dict__.pop("generate", None)
        if hasattr(text, "cache"):
            text.cache = saved["text_cache"]
        if pipe.retrieval is not None:
            pipe.retrieval.cache = saved["retrieval_cache"]
        pipe.precision = saved["precision"]


# ----------------------------------------------------------------------------------------------------------------
# Stage timing (wrappers on the components, so one pipeline call gives every stage and the total)
# ----------------------------------------------------------------------------------------------------------------
def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def stage_timer(pipe, times: dict[str, float]):
    """Accumulate per-stage wall times of the pipeline calls inside the block into `times` (seconds)."""
    device = pipe.device
    inner: list[float] = []            # time of timed calls nested in the running one (counted once, innermost)

    def timed(stage: str, fn: Callable) -> Callable:
        def wrapper(*a, **kw):
            sync(device)
            start = time.perf_counter()
            inner.append(0.0)
            try:
                out = fn(*a, **kw)
                sync(device)
            finally:
                elapsed = time.perf_counter() - start
                nested = inner.pop()
                times[stage] = times.get(stage, 0.0) + elapsed - nested
                if inner:
                    inner[-1] += elapsed
            return out
        return wrapper

    text = pipe.text_encoder
    patched = [(text, "forward", text.forward), (pipe, "_generate_base", pipe._generate_base),
               (pipe, "_generate_residual", pipe._generate_residual), (pipe, "_decode", pipe._decode)]
    had = [(obj, name, name in obj.__dict__) for obj, name, _ in patched]
    text.forward = timed("text", text.forward)
    pipe._generate_base = timed("mask", pipe._generate_base)
    pipe._generate_residual = timed("residual", pipe._generate_residual)
    pipe._decode = timed("decode", pipe._decode)
    retrieval = pipe.retrieval
    if retrieval is not None:
        retrieval_call = retrieval._query
        retrieval._query = timed("retrieval", retrieval_call)
    try:
        yield times
    finally:
        for (obj, name, fn), (_, _, was_own) in zip(patched, had):
            if was_own:
                setattr(obj, name, fn)
            else:
                obj.__dict__.pop(name, None)
        if retrieval is not None:
            retrieval.__dict__.pop("_query", None)


def timed_call(pipe, prompts: list[str], frames: int, steps: int, seed: int = 0) -> tuple[dict, object]:
    """One pipeline call with cold caches: ({stage: s, "total": s}, MotionOutput)."""
    clear_caches(pipe)
    times: dict[str, float] = {}
    with stage_timer(pipe, times):
        sync(pipe.device)
        start = time.perf_counter()
        out = pipe(prompts, lengths=[frames] * len(prompts), steps=steps, seed=seed)
        sync(pipe.device)
        times["total"] = time.perf_counter() - start
    times["text"] = times.get("text", 0.0)        # the naive path's re-encoding counts here, not in "residual"
    return times, out


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ----------------------------------------------------------------------------------------------------------------
# FLOPs and the machine's matmul throughput
# ----------------------------------------------------------------------------------------------------------------
class _AttentionFlops(torch.overrides.TorchFunctionMode):
    """Adds the FLOPs of F.scaled_dot_product_attention (QK^T and AV: 4·B·H·N·M·d), which the flop counter does
    not count for the CPU flash kernel."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, k = args[0], args[1]
            self.flops += 4 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1]
        return func(*args, **(kwargs or {}))


def count_stage_flops(pipe, prompts: list[str], frames: int, steps: int) -> dict[str, float]:
    """FLOPs of each stage of one pipeline call (matmuls, convolutions, attention), from the shapes."""
    from torch.utils.flop_counter import FlopCounterMode

    flops: dict[str, float] = {}
    wrappers = {}
    text = pipe.text_encoder

    def counted(stage: str, fn: Callable) -> Callable:
        def wrapper(*a, **kw):
            attn = _AttentionFlops()
            with FlopCounterMode(display=False) as fc, attn:
                out = fn(*a, **kw)
            flops[stage] = flops.get(stage, 0.0) + fc.get_total_flops() + attn.flops
            return out
        return wrapper

    clear_caches(pipe)
    wrappers = [(text, "forward"), (pipe, "_generate_base"), (pipe, "_generate_residual"), (pipe, "_decode")]
    text.forward = counted("text", text.forward)
    pipe._generate_base = counted("mask", pipe._generate_base)
    pipe._generate_residual = counted("residual", pipe._generate_residual)
    pipe._decode = counted("decode", pipe._decode)
    if pipe.retrieval is not None:
        pipe.retrieval._query = counted("retrieval", pipe.retrieval._query)
    try:
        pipe(prompts, lengths=[frames] * len(prompts), steps=steps, seed=0)
    finally:
        for obj, name in wrappers:
            obj.__dict__.pop(name, None)
        if pipe.retrieval is not None:
            pipe.retrieval.__dict__.pop("_query", None)
    return flops


def matmul_throughput(device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n×n @ n×n matmul in `dtype` (median of `repeats` after one warm-up)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    reps = 20 if torch.device(device).type == "cuda" else 3
    a @ b
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        times.append((time.perf_counter() - start) / reps)
    return 2 * n ** 3 / statistics.median(times)


# ----------------------------------------------------------------------------------------------------------------
# Accuracy of bf16 against fp32
# ----------------------------------------------------------------------------------------------------------------
def bf16_tolerance(pipe, prompts: list[str], frames: int, steps: int, fp32_out, bf16_out) -> dict:
    """How far the pipeline's precision "bf16" moves each stage from fp32, on the same inputs: text, retrieval and
    decoding under bf16 autocast, the transformers as bf16 weight copies (`mask_*`, `residual_*`; the
    `*_autocast` rows give the same measures for precision "bf16-autocast"). `pipe` is an fp32 pipeline,
    `fp32_out` / `bf16_out` whole runs of the fp32 and the bf16 path with the same seeds."""
    from models.low_precision import Bf16Copy

    device = pipe.device
    dev = device.type
    res: dict[str, float] = {}
    with torch.no_grad():
        clear_caches(pipe)
        t32 = pipe.text_encoder(prompts).float()
        clear_caches(pipe)
        with torch.autocast(dev, dtype=torch.bfloat16):
            t16 = pipe.text_encoder(prompts).float()
        clear_caches(pipe)
        res["text_rel_err"] = float((t16 - t32).norm() / t32.norm())
        r32 = pipe.retrieval(prompts)
        clear_caches(pipe)
        with torch.autocast(dev, dtype=torch.bfloat16):
            r16 = pipe.retrieval(prompts)
        clear_caches(pipe)
        res["retrieval_top1_agreement"] = float((r32.indices[:, 0] == r16.indices[:, 0]).float().mean())
        # first guided pass of the mask transformer (all-[MASK] map), same inputs
        b, tp, c = len(prompts), frames // pipe.tokenizer.downsample, pipe.mask.cfg.num_columns
        tokens = torch.full((b, tp, c), -2, dtype=torch.long, device=device)
        rt, rm = r32.r_t.to(device), r32.r_m.to(device)
        mask16 = Bf16Copy(pipe.mask, prepare=pipe.prepare_bf16_copy).get()      # as precision "bf16" runs them
        residual16 = Bf16Copy(pipe.residual, prepare=pipe.prepare_bf16_copy).get()
        l32 = pipe.mask.guided_logits(tokens, t32, rt, rm)
        with torch.autocast(dev, dtype=torch.bfloat16):
            l16_autocast = pipe.mask.guided_logits(tokens, t32, rt, rm)
        l16 = mask16.guided_logits(tokens, t32, rt, rm)
        fin = torch.isfinite(l32)
        p32 = torch.softmax(l32, -1)
        for suffix, out in (("", l16), ("_autocast", l16_autocast)):
            d = (out.float() - l32)[fin]
            res["mask_logit_max_abs_err" + suffix] = float(d.abs().max())
            res["mask_logit_rel_err" + suffix] = float(d.norm() / l32[fin].norm())
            res["mask_argmax_agreement" + suffix] = float((out.argmax(-1) == l32.argmax(-1)).float().mean())
            res["mask_prob_tv" + suffix] = float(0.5 * (p32 - torch.softmax(out.float(), -1)).abs().sum(-1).mean())
        # first residual level on the fp32 tokens
        toks = fp32_out.tokens.to(device)
        q32 = pipe.residual.guided_logits(toks, 1, t32)
        with torch.autocast(dev, dtype=torch.bfloat16):
            q16_autocast = pipe.residual.guided_logits(toks, 1, t32)
        q16 = residual16.guided_logits(toks, 1, t32)
        valid = toks[..., 0] >= 0
        fin = torch.isfinite(q32) & valid[..., None]
        for suffix, out in (("", q16), ("_autocast", q16_autocast)):
            d = (out.float() - q32)[fin]
            res["residual_logit_rel_err" + suffix] = float(d.norm() / q32[fin].norm())
            res["residual_argmax_agreement" + suffix] = float((out.argmax(-1) == q32.argmax(-1))[valid].float()
                                                              .mean())
            res["residual_prob_tv" + suffix] = float(0.5 * (torch.softmax(q32, -1) - torch.softmax(out.float(), -1))
                                                     .abs().sum(-1)[valid].mean())
        # decoding the same (fp32) tokens
        steps_t = torch.full((b,), tp, dtype=torch.long)
        x32 = pipe._decode(fp32_out.tokens, steps_t)
        with torch.autocast(dev, dtype=torch.bfloat16):
            x16 = pipe._decode(fp32_out.tokens, steps_t)
        res["decode_rel_err"] = float((x16 - x32).norm() / x32.norm())
    # whole runs with the same seeds: how many sampled tokens agree
    a, bt = fp32_out.tokens, bf16_out.tokens
    inside = a >= 0
    res["token_agreement_all_levels"] = float((a == bt)[inside].float().mean())
    res["token_agreement_base_layer"] = float((a[..., 0] == bt[..., 0])[inside[..., 0]].float().mean())
    return res


# ----------------------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------------------
def token_agreement(a, b) -> float:
    """Share of equal tokens of two (B, T', C, Q) maps at their valid (>= 0) positions."""
    return float((a == b)[a >= 0].float().mean())


def load_average() -> str:
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def machine(device) -> str:
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores"
    model = (cpuinfo() or {}).get("model name") or platform.processor() or platform.machine()
    return (f"{model} ({torch.backends.cpu.get_cpu_capability()}"
            f"{'' if bf16_slow_reason('cpu') else ', bf16 units'}), {os.cpu_count()} CPU cores, "
            f"{torch.get_num_threads()} torch threads")


PRECISION_OF = {"naive": "fp32", "fast_fp32": "fp32", "fast_bf16": "bf16", "fast_bf16_autocast": "bf16-autocast",
                "fast_bf16_compile": "bf16"}


def run_paths(components: dict, paths: list[str], batch: int, frames: int, steps: int, warmup: int, repeats: int,
              compiled=None) -> dict:
    """Time each path at one batch size, repeats interleaved. Returns {path: {"stages": {...}, "out": MotionOutput}}.
    `compiled`: the pipeline of the "fast_bf16_compile" path (its bf16 transformer copies compiled)."""
    prompts = prompts_for(batch)
    pipes = {}
    for path in paths:
        pipe = compiled if path == "fast_bf16_compile" else make_pipeline(components, precision=PRECISION_OF[path])
        if pipe.precision == "bf16":                # the bf16 weight copies are made here, outside the timed calls
            pipe.stage_module("mask"), pipe.stage_module("residual")
        pipes[path] = pipe
    samples: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
    outs = {}

    def one(path: str):
        pipe = pipes[path]
        ctx = naive_path(pipe, prompts) if path == "naive" else contextlib.nullcontext()
        with ctx:
            return timed_call(pipe, prompts, frames, steps)

    if "fast_bf16_compile" in paths and warmup == 0:
        one("fast_bf16_compile")          # compiles for this shape: never inside a timed call
    for r in range(warmup + repeats):
        for path in paths:
            times, out = one(path)
            outs[path] = out
            if r >= warmup:
                for k, v in times.items():
                    samples[path].setdefault(k, []).append(v)
    result = {}
    for path in paths:
        stages = {k: summarise(v) for k, v in samples[path].items()}
        result[path] = {"stages": stages, "out": outs[path], "load_after": load_average()}
    return result


@contextlib.contextmanager
def attention_timer(device, stats: dict):
    """Accumulate wall time ("seconds") and FLOPs ("flops") spent in attention kernels inside the block: SDPA and
    `models.attention.matmul_attention` (both patched for the block's duration)."""
    from models import attention as attention_module

    stats.setdefault("seconds", 0.0)
    stats.setdefault("flops", 0)

    def timed(fn):
        def wrapper(q, k, *rest, **kw):
            sync(device)
            start = time.perf_counter()
            out = fn(q, k, *rest, **kw)
            sync(device)
            stats["seconds"] += time.perf_counter() - start
            stats["flops"] += 4 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1]
            return out
        return wrapper

    sdpa, matmul = F.scaled_dot_product_attention, attention_module.matmul_attention
    F.scaled_dot_product_attention = timed(sdpa)
    attention_module.matmul_attention = timed(matmul)
    try:
        yield stats
    finally:
        F.scaled_dot_product_attention, attention_module.matmul_attention = sdpa, matmul


@torch.no_grad()
def attention_share(pipe, batch: int, frames: int, bf16: bool = True) -> dict:
    """One guided pass of the mask transformer (all-[MASK] map) in fp32 and (`bf16`) as a bf16 weight copy with
    each attention kernel (SDPA, and the two matmuls + softmax of `matmul_attention`), over the whole doubled batch
    and (when it has more rows) in the pipeline's CPU row slices, side by side: total seconds, seconds inside
    attention and the attention's GFLOP/s, showing what limits the passes."""
    from models.attention import use_attention_kernel
    from models.low_precision import Bf16Copy
    from models.pipeline import CPU_PASS_ROWS

    device = pipe.device
    mask = pipe.mask
    tp, c = frames // pipe.tokenizer.downsample, mask.cfg.num_columns
    g = torch.Generator().manual_seed(0)
    t = torch.randn(batch, mask.cfg.text_dim, generator=g).to(device)
    r = F.normalize(torch.randn(batch, 1, mask.cfg.retrieval_dim, generator=g), dim=-1).to(device)
    tokens = torch.full((batch, tp, c), -2, dtype=torch.long, device=device)
    out = {}
    rows = CPU_PASS_ROWS if 2 * batch > CPU_PASS_ROWS else None
    variants = [("fp32", mask, "sdpa", None)] + ([(f"fp32 in {rows}-row slices", mask, "sdpa", rows)] if rows else [])
    if bf16:
        copy16 = Bf16Copy(mask).get()
        variants += [("bf16 sdpa", copy16, "sdpa", None), ("bf16 matmul", copy16, "matmul", None)]
        if rows:
            variants.append((f"bf16 matmul in {rows}-row slices", copy16, "matmul", rows))
    for name, model, kernel, pass_rows in variants:
        use_attention_kernel(model, kernel)
        model.guided_logits(tokens, t, r, r, pass_rows=pass_rows)
        stats: dict = {}
        sync(device)
        start = time.perf_counter()
        with attention_timer(device, stats):
            model.guided_logits(tokens, t, r, r, pass_rows=pass_rows)
        sync(device)
        total = time.perf_counter() - start
        out[name] = {"pass_s": total, "attention_s": stats["seconds"], "attention_share": stats["seconds"] / total,
                     "attention_gflops": stats["flops"] / max(stats["seconds"], 1e-9) / 1e9}
    use_attention_kernel(mask, "sdpa")
    return out


def _time(fn: Callable, device, repeats: int = 3) -> float:
    fn()
    vals = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        vals.append(time.perf_counter() - start)
    return statistics.median(vals)


@torch.no_grad()
def cache_and_loop_costs(pipe, batch: int, frames: int) -> dict:
    """Seconds of text encoding + retrieval with cold and with warm caches (the same prompts again), and of the
    remaining Python loops over levels (residual input embedding of the top layer, RVQ code lookup + sum at decode)."""
    device = pipe.device
    prompts = prompts_for(batch)

    def cold():
        clear_caches(pipe)
        pipe.text_encoder(prompts)
        pipe.retrieval(prompts)

    def warm():
        pipe.text_encoder(prompts)
        pipe.retrieval(prompts)

    out = {"text_retrieval_cold": _time(cold, device)}
    cold()
    out["text_retrieval_warm"] = _time(warm, device)
    tp, c, q = frames // pipe.tokenizer.downsample, pipe.residual.cfg.num_columns, pipe.residual.cfg.num_quantizers
    tokens = torch.randint(0, 16, (batch, tp, c, q), device=device)
    out["residual_input_embedding_loop"] = _time(lambda: pipe.residual.input_embedding(tokens, q - 1), device)
    model = pipe.tokenizer.model
    joint = tokens[:, :, :model.num_groups].permute(0, 2, 1, 3).reshape(-1, tp, q)
    out["decode_code_lookup_loop"] = _time(lambda: model.quantizer.decode_indices(joint), device)
    return out


def bench(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(device),
                     "device": str(device), "torch": torch.__version__, "load_start": load_average(),
                     "settings": {"frames": args.frames, "steps": args.steps, "batches": args.batches,
                                  "warmup": args.warmup, "repeats": args.repeats, "db_rows": args.db_rows,
                                  "tiny": args.tiny}}
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if not args.silent else (lambda *a: None)
    build = tiny_components if args.tiny else paper_components
    start = time.perf_counter()
    components = build(str(device), db_rows=args.db_rows)
    results["build_s"] = time.perf_counter() - start
    log(f"[generate bench] components built in {results['build_s']:.1f} s, load {load_average()}")
    # machine limit: measured before and after every batch (a shared host's speed drifts by 2x), the best is the
    # ceiling the efficiencies are relative to
    results["matmul_samples"] = []
    # where bf16 is emulated (an AVX2-only CPU: 0.3-12 GFLOP/s against ~95 in fp32) the bf16 paths would take hours
    # and tell nothing a user should run: they are skipped, with the reason in the report, unless --force-bf16
    emulated = bf16_slow_reason(device)
    slow = None if args.force_bf16 else emulated
    results["bf16_skipped"] = slow
    if slow:
        log(f"[generate bench] bf16 paths skipped: {slow} (--force-bf16 times them anyway)")
    # an emulated 2048² bf16 matmul takes ~1 min: measure a small one there (and in tiny runs)
    bf16_size = dict(n=256, repeats=1) if args.tiny else dict(n=512, repeats=1) if emulated else dict(n=2048)
    results["bf16_matmul_n"] = bf16_size["n"]

    def measure_matmul() -> None:
        bf16 = matmul_throughput(device, torch.bfloat16, **bf16_size)
        results["matmul_samples"].append({"fp32": matmul_throughput(device, torch.float32) / 1e9,
                                          "bf16": bf16 / 1e9})
        results["matmul_gflops"] = {k: max(s[k] for s in results["matmul_samples"]) for k in ("fp32", "bf16")}
        log(f"[generate bench] matmul fp32 2048², bf16 {bf16_size['n']}²: {results['matmul_samples'][-1]}")

    measure_matmul()
    paths = ["naive", "fast_fp32"]
    if not slow:
        paths += ["fast_bf16"] + ([] if args.no_autocast_path else ["fast_bf16_autocast"])
    compiled = None
    results["notes"] = []
    if args.compile and slow:
        results["notes"].append("--compile ignored: it compiles the bf16 path, not timed here")
    elif args.compile:
        paths.append("fast_bf16_compile")
        compiled = make_pipeline(components, precision="bf16", pad_to=49)
        compiled.compile(args.compile_mode)     # its bf16 copies, static shapes (pad_to 49); None = the device's
        results["compile_mode"] = compiled.compile_options["mode"]
    results["runs"] = {}
    flops_b1 = None
    for batch in args.batches:
        run_list = paths if batch <= args.naive_max_batch else [p for p in paths if p != "naive"]
        big = batch >= 8
        warmup = args.big_warmup if big and args.big_warmup is not None else args.warmup
        repeats = args.big_repeats if big and args.big_repeats is not None else args.repeats
        res = run_paths(components, run_list, batch, args.frames, args.steps, warmup, repeats, compiled)
        entry = {p: {"stages": res[p]["stages"], "load_after": res[p]["load_after"]} for p in run_list}
        if "naive" in res:
            a, b = res["naive"]["out"].tokens, res["fast_fp32"]["out"].tokens
            entry["naive_equals_fast_fp32"] = bool(torch.equal(a, b))
            # float32 GEMM kernels are picked by row count, so a pass over 2B rows (or 8-row slices) and two passes
            # over B rows round differently (~1e-6 on logits at paper size); near-tied tokens can flip on that
            entry["naive_fast_fp32_token_agreement"] = token_agreement(a, b)
        if "fast_bf16_compile" in res:
            entry["compile_token_agreement_vs_bf16"] = token_agreement(res["fast_bf16"]["out"].tokens,
                                                                       res["fast_bf16_compile"]["out"].tokens)
        pipe = make_pipeline(components)
        if "fast_bf16" in res and (batch == args.batches[0] or args.tolerance_every_batch):
            entry["bf16_tolerance"] = bf16_tolerance(pipe, prompts_for(batch), args.frames, args.steps,
                                                     res["fast_fp32"]["out"], res["fast_bf16"]["out"])
        entry["caches"] = cache_and_loop_costs(make_pipeline(components), batch, args.frames)
        entry["attention"] = attention_share(make_pipeline(components), batch, args.frames, bf16=not slow)
        if flops_b1 is None:     # FLOPs grow linearly with the batch (same length, distinct prompts): count once
            flops_b1 = count_stage_flops(pipe, prompts_for(1), args.frames, args.steps)
        entry["flops"] = {k: v * batch for k, v in flops_b1.items()}
        entry["warmup"], entry["repeats"] = warmup, repeats
        results["runs"][str(batch)] = entry
        measure_matmul()
        log(f"[generate bench] batch {batch} done, load {load_average()}: " +
            ", ".join(f"{p} {entry[p]['stages']['total']['median']:.3f} s" for p in run_list))
    # scaling
    if not args.skip_scaling:
        if slow and args.scaling_path == "fast_bf16":
            args.scaling_path = "fast_fp32"
            results["notes"].append("scaling table on the fast fp32 path (bf16 not timed here)")
        results["scaling"] = scaling(components, args, device, log, results["runs"])
    results["load_end"] = load_average()
    return results


def scaling(components: dict, args, device, log, results_runs: dict | None = None) -> dict:
    out: dict = {"path": args.scaling_path}
    results_runs = results_runs or {}
    opts = {"precision": "bf16"} if args.scaling_path == "fast_bf16" else {}
    pipe = make_pipeline(components, **opts)
    by_len = {}
    for frames in args.scaling_lengths:
        vals = []
        for r in range(args.warmup + args.repeats):
            times, _ = timed_call(pipe, prompts_for(1), frames, args.steps)
            if r >= args.warmup:
                vals.append(times["total"])
        by_len[str(frames)] = summarise(vals)
    out["length_batch1"] = by_len
    out["length_load"] = load_average()
    by_batch = {}
    for batch in args.scaling_batches:
        main_run = results_runs.get(str(batch), {}).get(args.scaling_path)
        if main_run is not None:          # measured above: reuse it (per sample)
            st = main_run["stages"]["total"]
            by_batch[str(batch)] = {k: (v / batch if k != "n" else v) for k, v in st.items()}
            continue
        vals = []
        for r in range(args.warmup + max(1, args.repeats - 1)):
            times, _ = timed_call(pipe, prompts_for(batch), args.frames, args.steps)
            if r >= args.warmup:
                vals.append(times["total"] / batch)
        by_batch[str(batch)] = summarise(vals)
    out["batch_per_sample"] = by_batch
    out["batch_load"] = load_average()
    log(f"[generate bench] scaling length/batch done, load {load_average()}")
    by_db = {}
    enc = components["retrieval"].encoder
    from models.pipeline import Retrieval

    for rows in args.db_sizes:
        db = components["retrieval"].database if rows == args.db_rows else simulated_database(
            rows, dim=components["retrieval"].database.motion_feats.shape[1], device=str(device))
        retr = Retrieval(enc, db, cache=False)
        entry = {}
        for batch in (1, 32):
            prompts = prompts_for(batch)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.scaling_path == "fast_bf16"):
                retr(prompts)
                vals, qvals = [], []
                emb = enc.encode_text(prompts).float().cpu()
                for _ in range(max(3, args.repeats)):
                    sync(device)
                    s = time.perf_counter()
                    retr(prompts)
                    sync(device)
                    vals.append(time.perf_counter() - s)
                    s = time.perf_counter()
                    db.query(emb, k=1)
                    sync(device)
                    qvals.append(time.perf_counter() - s)
            entry[f"b{batch}"] = {"retrieval": summarise(vals), "query_only": summarise(qvals)}
        by_db[str(len(db))] = entry
        del db, retr
        gc.collect()
    out["database"] = by_db
    out["database_load"] = load_average()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------
PATH_NAMES = {"naive": "naive (2-pass CFG, text per stage, fp32)", "fast_fp32": "fast fp32",
              "fast_bf16": "fast bf16 (bf16 weights)", "fast_bf16_autocast": "fast bf16 autocast (fp32 weights)",
              "fast_bf16_compile": "fast bf16 + compile"}


def _ms(entry: dict) -> str:
    return f"{entry['median']:.3f} ({entry['min']:.3f}–{entry['max']:.3f})"


def render(results: dict) -> str:
    lines = [f"generation benchmark — {results['date']} — {results['machine']} — device {results['device']} — "
             f"torch {results['torch']} — load average at start {results['load_start']}, at end "
             f"{results['load_end']}", ""]
    mm = results["matmul_gflops"]
    samples = results.get("matmul_samples", [mm])
    bf16_n = results.get("bf16_matmul_n", 2048)
    lines.append(f"matmul 2048² (this run, best of {len(samples)} measurements before and after each batch: "
                 + ", ".join(f"{s['fp32']:.0f}" for s in samples) + " fp32; "
                 + ", ".join(f"{s['bf16']:.0f}" for s in samples)
                 + f" bf16{'' if bf16_n == 2048 else f' at {bf16_n}²'}): fp32 "
                 f"{mm['fp32']:.0f} GFLOP/s, bf16 {mm['bf16']:.0f} GFLOP/s; components built in "
                 f"{results['build_s']:.1f} s")
    if results.get("bf16_skipped"):
        lines.append(f"\nbf16 paths not timed: {results['bf16_skipped']} ("
                     "`--force-bf16` times them anyway)")
    for note in results.get("notes", []):
        lines.append(f"\n{note}")
    s = results["settings"]
    for batch, entry in results["runs"].items():
        paths = [p for p in PATH_NAMES if p in entry]
        b = int(batch)
        lines += ["", f"### batch {batch}, {s['frames']} frames, {s['steps']} steps — seconds per call, median "
                      f"(min–max) of {entry.get('repeats', s['repeats'])} after {entry.get('warmup', s['warmup'])} "
                      f"warm-up",
                  "", "| stage | " + " | ".join(PATH_NAMES[p] for p in paths) + " |",
                  "|---|" + "---:|" * len(paths)]
        for stage in (*STAGES, "total"):
            row = [stage if stage != "total" else "**whole pipeline**"]
            for p in paths:
                st = entry[p]["stages"].get(stage)
                row.append(_ms(st) if st else "–")
            lines.append("| " + " | ".join(row) + " |")
        row = ["per sample"] + [f"{entry[p]['stages']['total']['median'] / b:.3f}" for p in paths]
        lines.append("| " + " | ".join(row) + " |")
        fl = entry["flops"]
        gen_flops = fl.get("mask", 0) + fl.get("residual", 0)
        lines += ["", "FLOPs of one call (counted at batch 1 × batch): " +
                  ", ".join(f"{k} {v / 1e9:.1f} G" for k, v in fl.items()), ""]
        lines += ["| path | speed-up over naive (whole pipeline) | transformer passes GFLOP/s | efficiency vs matmul "
                  "of its precision | decode GFLOP/s |", "|---|---:|---:|---:|---:|"]
        for p in paths:
            st = entry[p]["stages"]
            t_gen = st["mask"]["median"] + st["residual"]["median"]
            rate = gen_flops / t_gen / 1e9
            peak = mm["bf16"] if "bf16" in p else mm["fp32"]
            speed = (entry["naive"]["stages"]["total"]["median"] / st["total"]["median"]) if "naive" in entry else math.nan
            dec = fl.get("decode", 0) / st["decode"]["median"] / 1e9
            lines.append(f"| {PATH_NAMES[p]} | {speed:.2f}× | {rate:.0f} | {rate / peak:.0%} | {dec:.0f} |")
        ca = entry.get("caches")
        if ca:
            lines.append(f"\ntext encoding + retrieval of the batch: cold caches {ca['text_retrieval_cold']:.3f} s, warm "
                         f"(same prompts again) {ca['text_retrieval_warm'] * 1000:.2f} ms; remaining loops over RVQ "
                         f"levels: residual input embedding {ca['residual_input_embedding_loop'] * 1000:.2f} ms per "
                         f"pass, decoder code lookup {ca['decode_code_lookup_loop'] * 1000:.2f} ms per decode")
        at = entry.get("attention")
        if at:
            lines.append("\none guided mask-transformer pass (all-[MASK] map): " + "; ".join(
                f"{k} {v['pass_s']:.3f} s, of it attention {v['attention_share']:.0%} at "
                f"{v['attention_gflops']:.0f} GFLOP/s" for k, v in at.items()))
        if "compile_token_agreement_vs_bf16" in entry:
            lines.append(f"\ncompiled bf16 tokens agreeing with eager bf16 (same seeds): "
                         f"{entry['compile_token_agreement_vs_bf16']:.2%}")
        if "naive_equals_fast_fp32" in entry:
            same = entry["naive_equals_fast_fp32"]
            lines.append(f"\nnaive and fast fp32 tokens identical (same seeds): {same}")
            if not same and "naive_fast_fp32_token_agreement" in entry:
                lines[-1] += (f" ({entry['naive_fast_fp32_token_agreement']:.2%} of tokens equal: float32 kernels "
                              "chosen by row count round differently, and near-tied tokens flip)")
        if "bf16_tolerance" in entry:
            lines += ["", "bf16 against fp32 (same inputs; tokens: same seeds):", "", "| measure | value |",
                      "|---|---:|"]
            for k, v in entry["bf16_tolerance"].items():
                lines.append(f"| {k} | {v:.4g} |")
        lines.append(f"\nload average after this batch: {entry[paths[-1]]['load_after']}")
    sc = results.get("scaling")
    if sc:
        lines += ["", f"### scaling ({PATH_NAMES[sc['path']]})", "", "| motion length (frames), batch 1 | s per call |",
                  "|---|---:|"]
        for k, v in sc["length_batch1"].items():
            lines.append(f"| {k} | {_ms(v)} |")
        lines += [f"\nload average: {sc['length_load']}", "", f"| batch ({s['frames']} frames) | s per sample |",
                  "|---|---:|"]
        for k, v in sc["batch_per_sample"].items():
            lines.append(f"| {k} | {_ms(v)} |")
        lines += [f"\nload average: {sc['batch_load']}", "",
                  "| database rows | retrieval batch 1 (s) | of it query | retrieval batch 32 (s) | of it query |",
                  "|---|---:|---:|---:|---:|"]
        for k, v in sc["database"].items():
            lines.append(f"| {int(k):,} | {_ms(v['b1']['retrieval'])} | {_ms(v['b1']['query_only'])} | "
                         f"{_ms(v['b32']['retrieval'])} | {_ms(v['b32']['query_only'])} |")
        lines.append(f"\nload average: {sc['database_load']}")
    return "\n".join(lines)


def _int_list(text: str, name: str, low: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BenchmarkArgError(f"{_MOD}: {name} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < low:
        raise BenchmarkArgError(f"{_MOD}: {name} must hold integers >= {low}, got {text!r}")
    return values


def parse_args(argv: list[str] | None):
    from models.pipeline import COMPILE_MODES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    ap.add_argument("--batches", default=None, help="batch sizes (default 1,32 on CPU, 1,32,256 on CUDA)")
    ap.add_argument("--frames", type=int, default=196, help="motion length in frames (default 196)")
    ap.add_argument("--steps", type=int, default=10, help="mask-transformer steps (default 10)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up calls per path (default 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per path (default 3)")
    ap.add_argument("--big-warmup", type=int, default=None, help="warm-up calls at batches >= 8 (default --warmup)")
    ap.add_argument("--big-repeats", type=int, default=None, help="timed calls at batches >= 8 (default --repeats)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--db-rows", type=int, default=72000, help="simulated database rows (default 72000)")
    ap.add_argument("--naive-max-batch", type=int, default=32, help="largest batch that also times the naive path")
    ap.add_argument("--no-autocast-path", action="store_true",
                    help="skip the bf16-autocast path (timed by default beside the bf16-weights path)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the transformer blocks "
                    "(static shapes: pad_to 49; compiled once per batch size, outside the timed calls)")
    ap.add_argument("--compile-mode", default=None, choices=COMPILE_MODES,
                    help="torch.compile mode (default: reduce-overhead = CUDA graphs on CUDA, 'default' on CPU)")
    ap.add_argument("--skip-scaling", action="store_true", help="no scaling table")
    ap.add_argument("--scaling-path", default="fast_bf16", help="fast_bf16 | fast_fp32 (default fast_bf16)")
    ap.add_argument("--scaling-lengths", default=None, help="frames (default 64,128,196)")
    ap.add_argument("--scaling-batches", default=None, help="batch sizes (default 1,8,32)")
    ap.add_argument("--db-sizes", default=None, help="database rows (default 10000,72000,1000000)")
    ap.add_argument("--force-bf16", action="store_true",
                    help="time the bf16 paths also where bf16 matmuls are emulated (a CPU without AMX / AVX-512 BF16 "
                    "/ Arm BF16: hours at paper size); by default they are skipped there, with the reason")
    ap.add_argument("--tolerance-every-batch", action="store_true", help="bf16 tolerance at every batch size")
    ap.add_argument("--quick", action="store_true",
                    help="short run: batches 1,4, 1 repeat, lengths 64,196, database sizes 10k,72k")
    ap.add_argument("--tiny", action="store_true", help="tiny components (tests / smoke runs; not a measurement)")
    ap.add_argument("--silent", action="store_true", help="no progress lines on stderr")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--plot", default=None, metavar="PATH", help="also draw the results to this PNG "
                    "(utils.benchmarks.plot_generation: seconds per sample by stage against the targets, scaling)")
    args = ap.parse_args(argv)
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise BenchmarkArgError(f"{_MOD}: --device must be cpu or cuda, got {args.device!r}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkArgError(f"{_MOD}: --device {args.device} given but CUDA is not available on this machine")
    if args.scaling_path not in ("fast_bf16", "fast_fp32"):
        raise BenchmarkArgError(f"{_MOD}: --scaling-path must be fast_bf16 or fast_fp32, got {args.scaling_path!r}")
    for name in ("frames", "steps", "repeats", "threads", "db_rows"):
        if getattr(args, name) < 1:
            raise BenchmarkArgError(f"{_MOD}: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise BenchmarkArgError(f"{_MOD}: --warmup must be >= 0, got {args.warmup}")
    if not 40 <= args.frames <= 196:
        raise BenchmarkArgError(f"{_MOD}: --frames must be in [40, 196] (HumanML3D lengths), got {args.frames}")
    gpu = torch.device(args.device).type == "cuda"
    default_batches = "1,32,256" if gpu else "1,32"
    if args.quick:
        args.batches = args.batches or "1,4"
        args.repeats = 1
        args.scaling_lengths = args.scaling_lengths or "64,196"
        args.scaling_batches = args.scaling_batches or "1,4"
        args.db_sizes = args.db_sizes or "10000,72000"
    args.scaling_lengths = args.scaling_lengths or "64,128,196"
    args.scaling_batches = args.scaling_batches or "1,8,32"
    args.db_sizes = args.db_sizes or "10000,72000,1000000"
    args.batches = _int_list(args.batches or default_batches, "--batches")
    args.scaling_lengths = _int_list(args.scaling_lengths, "--scaling-lengths", 40)
    if max(args.scaling_lengths) > 196:
        raise BenchmarkArgError(f"{_MOD}: --scaling-lengths must lie in [40, 196], got {args.scaling_lengths}")
    args.scaling_batches = _int_list(args.scaling_batches, "--scaling-batches")
    args.db_sizes = _int_list(args.db_sizes, "--db-sizes", 3)
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except BenchmarkArgError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = bench(args)
    print(render(results))
    if args.json:
        from utils.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    if args.plot:
        from utils.benchmarks.plot_generation import plot_generation

        plot_generation(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
