"""The standard text-to-motion evaluator of Guo et al. 2022 (`reference.md` §3), loadable from the released weights.

Three modules, with the exact parameter names and shapes of the released `text_mot_match/model/finest.tar`:

    MovementConvEncoder   (B, T, D-4) -> (B, T/4, 512)        two stride-2 convolutions + a time-wise Linear
    MotionEncoderBiGRUCo  (B, T/4, 512), lengths T/4 -> (B, 512)
    TextEncoderBiGRUCo    word_embs (B, L, 300), pos_ohot (B, L, 15), sent_len (B,) -> (B, 512)

`T2MEvaluator` bundles them with the evaluator's own normalisation statistics (`Comp_v6_KLD005/meta/{mean,std}.npy`)
and is the object every metric is computed with. It is always in eval mode and never records gradients. Unlike the
reference `get_co_embeddings`, which returns embeddings in length-sorted order, `encode_text` / `encode_motion`
sort internally (the packed GRU needs it) and return rows **in the caller's order**; the metrics only need pairs
aligned, so results are the same.

    evaluator = load_official_evaluator("checkpoints/t2m/text_mot_match/model/finest.tar", dataset="t2m")
    x = evaluator.normalize_for_evaluator(raw_features)          # (B, T, 263) raw -> evaluator-normalised
    m = evaluator.encode_motion(x, lengths)                      # (B, 512)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from datasets.registry import DATASETS, dataset_facts
from utils.atomic import atomic_write_text

# Feature widths per dataset (reference §3.1 dim_pose).
DIM_POSE = {ds: dataset_facts(ds).dim for ds in DATASETS}      # 263 / 251 (datasets.registry)
DATASET_NAMES = {ds: dataset_facts(ds).title for ds in DATASETS}
META_SUBDIRS = ("Comp_v6_KLD005/meta", "text_mot_match/meta", "meta")   # searched under checkpoints/<ds>/
CHECKPOINT_KEYS = ("text_encoder", "motion_encoder", "movement_encoder")


@dataclass
class EvaluatorConfig:
    """Widths of the evaluator (defaults: reference §3.1 evaluator options)."""
    dim_pose: int = 263                  # 263 HumanML3D, 251 KIT (reference §3.1)
    dim_word: int = 300                  # GloVe width (reference §3.1)
    dim_pos_ohot: int = 15               # POS categories (reference §3.4)
    dim_text_hidden: int = 512           # reference §3.1
    dim_motion_hidden: int = 1024        # reference §3.1
    dim_coemb_hidden: int = 512          # output width of both encoders (reference §3.1)
    dim_movement_enc_hidden: int = 512   # reference §3.1
    dim_movement_latent: int = 512       # reference §3.1
    unit_length: int = 4                 # frames per movement token: two stride-2 convs (reference §3.1)

    @classmethod
    def for_dataset(cls, dataset: str, **kw) -> "EvaluatorConfig":
        return cls(dim_pose=dim_pose_of(dataset), **kw)

    @classmethod
    def from_state(cls, ckpt: dict) -> "EvaluatorConfig":
        """Read the widths off the state-dict shapes (so small test evaluators load like the real one)."""
        te, me, mv = ckpt["text_encoder"], ckpt["motion_encoder"], ckpt["movement_encoder"]
        return cls(dim_pose=int(mv["main.0.weight"].shape[1]) + 4,
                   dim_word=int(te["pos_emb.weight"].shape[0]),
                   dim_pos_ohot=int(te["pos_emb.weight"].shape[1]),
                   dim_text_hidden=int(te["input_emb.weight"].shape[0]),
                   dim_motion_hidden=int(me["input_emb.weight"].shape[0]),
                   dim_coemb_hidden=int(te["output_net.3.weight"].shape[0]),
                   dim_movement_enc_hidden=int(mv["main.0.weight"].shape[0]),
                   dim_movement_latent=int(mv["out_net.weight"].shape[0]))


def dim_pose_of(dataset: str) -> int:
    if dataset not in DIM_POSE:
        raise ValueError(f"models/evaluator.py: dataset must be one of {sorted(DIM_POSE)}, got {dataset!r}")
    return DIM_POSE[dataset]


def _init_weights(module: nn.Module) -> None:
    """Fresh init of the reference: xavier_normal weights, zero biases (GRU and hidden parameters: see owners)."""
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class MovementConvEncoder(nn.Module):
    """Movement encoder: local motion features, 4 frames per token (reference §3.2).

    Args:
        x: (B, T, D-4) normalised features without the 4 foot-contact dims
    Returns:
        (B, T/4, D_latent)
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv1d(input_size, hidden_size, 4, 2, 1), nn.Dropout(0.2, inplace=True), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv1d(hidden_size, output_size, 4, 2, 1), nn.Dropout(0.2, inplace=True), nn.LeakyReLU(0.2, inplace=True),
        )
        self.out_net = nn.Linear(output_size, output_size)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.main(x.permute(0, 2, 1)).permute(0, 2, 1)
        return self.out_net(h)


class MovementConvDecoder(nn.Module):
    """Reconstruction head used only to pre-train the movement encoder when we train our own evaluator (the
    reference pre-trains it inside an autoencoder, reference §3.5). Not part of the released checkpoint.

    Args:
        z: (B, T/4, D_latent)
    Returns:
        (B, T, D_out) reconstructed features (the D-4 non-contact dims)
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose1d(input_size, hidden_size, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.ConvTranspose1d(hidden_size, output_size, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
        )
        self.out_net = nn.Linear(output_size, output_size)
        self.apply(_init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out_net(self.main(z.permute(0, 2, 1)).permute(0, 2, 1))


class _BiGRUCo(nn.Module):
    """Shared body of the two co-embedding encoders: input Linear, packed BiGRU from a learned initial state, head on
    the concatenated final forward/backward states."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.input_emb = nn.Linear(input_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_net = nn.Sequential(
            nn.Linear(hidden_size * 2, hidden_size), nn.LayerNorm(hidden_size), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden_size, output_size),
        )
        self.input_emb.apply(_init_weights)
        self.output_net.apply(_init_weights)
        self.hidden = nn.Parameter(torch.randn((2, 1, hidden_size), requires_grad=True))

    def _encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (B, S, H_in) already embedded; lengths (B,) any order. Returns (B, D_out) in input order."""
        lengths = torch.as_tensor(lengths).detach().to("cpu", torch.int64)
        if lengths.ndim != 1 or lengths.shape[0] != x.shape[0]:
            raise ValueError(f"models/evaluator.py: expected one length per batch row ({x.shape[0]}), got lengths "
                             f"of shape {tuple(lengths.shape)}")
        if bool((lengths < 1).any()) or bool((lengths > x.shape[1]).any()):
            raise ValueError(f"models/evaluator.py: sequence lengths must be in [1, {x.shape[1]}] (the padded length), "
                             f"got min {int(lengths.min())}, max {int(lengths.max())}")
        hidden = self.hidden.repeat(1, x.shape[0], 1)
        # enforce_sorted=False sorts by length for the packed GRU and returns the final states in input order
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, last = self.gru(packed, hidden)                          # (2, B, H)
        return self.output_net(torch.cat([last[0], last[1]], dim=-1))


class TextEncoderBiGRUCo(_BiGRUCo):
    """Text encoder of the co-embedding space (reference §3.2).

    Args:
        word_embs: (B, L, 300) GloVe vectors; pos_onehot: (B, L, 15); cap_lens: (B,) sentence lengths (any order)
    Returns:
        (B, 512) in input order
    """

    def __init__(self, word_size: int, pos_size: int, hidden_size: int, output_size: int):
        super().__init__(word_size, hidden_size, output_size)
        self.pos_emb = nn.Linear(pos_size, word_size)
        self.pos_emb.apply(_init_weights)

    def forward(self, word_embs: torch.Tensor, pos_onehot: torch.Tensor, cap_lens: torch.Tensor) -> torch.Tensor:
        x = self.input_emb(word_embs + self.pos_emb(pos_onehot))
        return self._encode(x, cap_lens)


class MotionEncoderBiGRUCo(_BiGRUCo):
    """Motion encoder of the co-embedding space over movement tokens (reference §3.2).

    Args:
        movements: (B, T', 512) output of MovementConvEncoder; m_lens: (B,) lengths in tokens (frames // 4)
    Returns:
        (B, 512) in input order
    """

    def forward(self, movements: torch.Tensor, m_lens: torch.Tensor) -> torch.Tensor:
        return self._encode(self.input_emb(movements), m_lens)


def build_encoders(cfg: EvaluatorConfig) -> tuple[TextEncoderBiGRUCo, MotionEncoderBiGRUCo, MovementConvEncoder]:
    """Fresh (text, motion, movement) encoders of the given widths."""
    text = TextEncoderBiGRUCo(cfg.dim_word, cfg.dim_pos_ohot, cfg.dim_text_hidden, cfg.dim_coemb_hidden)
    motion = MotionEncoderBiGRUCo(cfg.dim_movement_latent, cfg.dim_motion_hidden, cfg.dim_coemb_hidden)
    movement = MovementConvEncoder(cfg.dim_pose - 4, cfg.dim_movement_enc_hidden, cfg.dim_movement_latent)
    return text, motion, movement


class T2MEvaluator(nn.Module):
    """The evaluator: three frozen encoders and the meta statistics the motions must be normalised with.

    Args:
        cfg: widths; mean, std: (D,) evaluator normalisation statistics (feat_bias rule, reference §1.5)
    """

    def __init__(self, cfg: EvaluatorConfig, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.cfg = cfg
        self.text_encoder, self.motion_encoder, self.movement_encoder = build_encoders(cfg)
        mean, std = np.asarray(mean, np.float32).reshape(-1), np.asarray(std, np.float32).reshape(-1)
        if mean.shape != (cfg.dim_pose,) or std.shape != (cfg.dim_pose,):
            raise ValueError(f"models/evaluator.py: evaluator meta mean/std must have shape ({cfg.dim_pose},), got "
                             f"{mean.shape} and {std.shape}")
        self.register_buffer("mean", torch.from_numpy(mean.copy()))
        self.register_buffer("std", torch.from_numpy(std.copy()))
        self.source = ""                                   # the checkpoint path, set by the loader
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "T2MEvaluator":
        """The evaluator is always in eval mode (reference §3.2); `train()` is a no-op."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def _tensor(self, x: Any, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(self.device, dtype)

    def normalize_for_evaluator(self, raw_features):
        """De-normalised (raw) features (..., D) -> normalised with the evaluator's meta mean/std. numpy or torch."""
        if raw_features.shape[-1] != self.cfg.dim_pose:
            raise ValueError(f"models/evaluator.py: normalize_for_evaluator expects raw features with "
                             f"{self.cfg.dim_pose} dims in the last axis, got shape {tuple(raw_features.shape)}")
        if torch.is_tensor(raw_features):
            mean, std = self.mean.to(raw_features.device), self.std.to(raw_features.device)
            return (raw_features.float() - mean) / std
        return (np.asarray(raw_features, np.float32) - self.mean.cpu().numpy()) / self.std.cpu().numpy()

    @torch.no_grad()
    def encode_text(self, word_embs, pos_ohot, cap_lens) -> torch.Tensor:
        """word_embs (B, L, 300), pos_ohot (B, L, 15), cap_lens (B,) in any order -> (B, 512), input order."""
        return self.text_encoder(self._tensor(word_embs), self._tensor(pos_ohot),
                                 torch.as_tensor(np.asarray(cap_lens) if not torch.is_tensor(cap_lens) else cap_lens))

    @torch.no_grad()
    def encode_motion(self, motions, m_lens) -> torch.Tensor:
        """motions (B, T, D) evaluator-normalised, zero-padded past m_lens (frames) -> (B, 512), input order.

        As in the reference: the last 4 dims (foot contacts) are dropped before the movement encoder and the GRU
        runs over m_lens // unit_length tokens.
        """
        motions = self._tensor(motions)
        if motions.ndim != 3 or motions.shape[-1] != self.cfg.dim_pose:
            raise ValueError(f"models/evaluator.py: encode_motion expects motions (B, T, {self.cfg.dim_pose}), got "
                             f"{tuple(motions.shape)}")
        m_lens = torch.as_tensor(np.asarray(m_lens) if not torch.is_tensor(m_lens) else m_lens).to("cpu").long()
        movements = self.movement_encoder(motions[..., :-4])
        return self.motion_encoder(movements, m_lens // self.cfg.unit_length)


# ------------------------------------------------------------------------------------------------------ loading

class EvaluatorLoadError(RuntimeError):
    """The evaluator checkpoint or its meta statistics are missing, truncated or of the wrong dataset."""


def read_opt_txt(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a T2M `opt.txt`: header/footer lines, `key: value` lines; bool, float (`^[-+]?[0-9]+\\.[0-9]+$`), int
    (digits) or string values (reference §3.1)."""
    import re

    out: dict[str, Any] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("---") or ":" not in line:
                continue
            key, value = (s.strip() for s in line.split(":", 1))
            if value in ("True", "False"):
                out[key] = value == "True"
            elif re.fullmatch(r"[-+]?[0-9]+\.[0-9]+", value):
                out[key] = float(value)
            elif value.isdigit():
                out[key] = int(value)
            else:
                out[key] = value
    return out


def write_opt_txt(path: str | os.PathLike, opts: dict[str, Any]) -> None:
    """Write options in the T2M `opt.txt` format (atomic)."""
    lines = ["------------ Options -------------"] + [f"{k}: {v}" for k, v in opts.items()]
    lines.append("-------------- End ----------------")
    atomic_write_text(path, "\n".join(lines) + "\n")


def find_meta_dir(ckpt_path: str | os.PathLike) -> Path:
    """The meta folder of an evaluator checkpoint `checkpoints/<ds>/text_mot_match/model/finest.tar`:
    the first of `checkpoints/<ds>/{Comp_v6_KLD005/meta, text_mot_match/meta, meta}` holding mean.npy and std.npy."""
    ds_dir = Path(ckpt_path).resolve().parent.parent.parent
    tried = [ds_dir / sub for sub in META_SUBDIRS]
    for d in tried:
        if (d / "mean.npy").is_file() and (d / "std.npy").is_file():
            return d
    raise EvaluatorLoadError(
        f"models/evaluator.py: no evaluator statistics (mean.npy, std.npy) found for {ckpt_path}; looked in "
        + ", ".join(str(d) for d in tried)
        + ". The official download puts them in checkpoints/<t2m|kit>/Comp_v6_KLD005/meta/; or pass meta_dir=...")


def _load_state(path: Path) -> dict:
    # The released finest.tar holds only state dicts (OrderedDicts of tensors), Adam optimizer states (dicts,
    # lists, floats, bools, tuples) and the ints `epoch` / `iter`: all of it is accepted by the restricted
    # `weights_only=True` unpickler (checked in tests/test_evaluator.py on a file of that layout), so we never
    # need the unsafe full unpickler.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                                         # truncated zip, not a torch file, ...
        size = path.stat().st_size
        raise EvaluatorLoadError(
            f"models/evaluator.py: could not read evaluator checkpoint {path} ({size} bytes): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. The file is truncated or not a torch checkpoint; "
            f"download it again (MoMask: prepare/download_evaluator.sh) or retrain with train_evaluator.py") from e


def load_official_evaluator(path: str | os.PathLike, dataset: str = "t2m", device: str | torch.device = "cpu",
                            meta_dir: str | os.PathLike | None = None) -> T2MEvaluator:
    """Load the standard evaluator `text_mot_match/model/finest.tar` (a dict with `text_encoder`, `motion_encoder`,
    `movement_encoder` state dicts and the standard parameter names) with its meta statistics.

    Args:
        path: the finest.tar file
        dataset: "t2m" (263-d) or "kit" (251-d); a checkpoint of the other dataset is refused
        meta_dir: folder with mean.npy / std.npy; default: found next to the checkpoint (see `find_meta_dir`)
    """
    path = Path(path)
    expected_dim = dim_pose_of(dataset)
    if not path.is_file():
        raise EvaluatorLoadError(
            f"models/evaluator.py: evaluator checkpoint {path} not found. Expected the standard evaluator file "
            f"checkpoints/{dataset}/text_mot_match/model/finest.tar (MoMask: prepare/download_evaluator.sh), or one "
            f"trained with `python train_evaluator.py` (runs/evaluator/<name>/text_mot_match/model/finest.tar)")
    ckpt = _load_state(path)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise EvaluatorLoadError(f"models/evaluator.py: {path} is not an evaluator checkpoint: missing keys "
                                 f"{missing} (expected {list(CHECKPOINT_KEYS)}), found {found}")
    try:
        cfg = EvaluatorConfig.from_state(ckpt)
    except KeyError as e:
        raise EvaluatorLoadError(f"models/evaluator.py: {path}: state dict lacks the standard parameter {e}") from e
    if cfg.dim_pose != expected_dim:
        other = {v: k for k, v in DIM_POSE.items()}.get(cfg.dim_pose, "unknown")
        raise EvaluatorLoadError(
            f"models/evaluator.py: {path} is an evaluator for {cfg.dim_pose}-d features (movement_encoder "
            f"main.0.weight takes {cfg.dim_pose - 4} channels, dataset {other!r}), but dataset={dataset!r} needs "
            f"{expected_dim}-d ({DATASET_NAMES[dataset]}). Use checkpoints/{dataset}/text_mot_match/model/finest.tar")
    meta = Path(meta_dir) if meta_dir is not None else find_meta_dir(path)
    try:
        mean, std = np.load(meta / "mean.npy"), np.load(meta / "std.npy")
    except (OSError, ValueError) as e:
        raise EvaluatorLoadError(f"models/evaluator.py: cannot read evaluator statistics mean.npy/std.npy in {meta}: "
                                 f"{e}") from e
    if mean.shape != (expected_dim,) or std.shape != (expected_dim,):
        raise EvaluatorLoadError(f"models/evaluator.py: evaluator statistics in {meta} have shapes {mean.shape} / "
                                 f"{std.shape}, expected ({expected_dim},) for dataset={dataset!r}")
    evaluator = T2MEvaluator(cfg, mean, std)
    for key in CHECKPOINT_KEYS:
        module = getattr(evaluator, key)
        try:
            module.load_state_dict(ckpt[key], strict=True)
        except RuntimeError as e:
            raise EvaluatorLoadError(f"models/evaluator.py: {path}: '{key}' does not match the standard "
                                     f"architecture: {e}") from e
    evaluator.source = str(path)
    return evaluator.to(device)


def evaluator_state(text_encoder: nn.Module, motion_encoder: nn.Module, movement_encoder: nn.Module,
                    **extra) -> dict:
    """A checkpoint dict in the official layout (`extra`: opt_text_encoder, opt_motion_encoder, epoch, iter)."""
    return {"text_encoder": text_encoder.state_dict(), "motion_encoder": motion_encoder.state_dict(),
            "movement_encoder": movement_encoder.state_dict(), **extra}
