"""models/attention.py: SSTA / STA against a hand-written attention, key masks, the block and the 2D positional code."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.attention import SSTA, STA, TransformerBlock, positional_encoding_2d

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny tensors, one thread

B, N, D, H, DR, K = 2, 3, 4, 2, 3, 2          # batch, tokens, width, heads, retrieval width, retrieved items


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for every parameter (LayerNorm scales too), so the reference sees non-trivial weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    return module.eval()


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, N, D, generator=g), torch.randn(B, D, generator=g),
            torch.randn(B, K, DR, generator=g), torch.randn(B, K, DR, generator=g))


def ln(x, norm):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def reference_attention(att, z, keys, values, keep):
    """softmax(Q Kᵀ/√d_h) V per head with explicit loops; keys with keep False get −inf scores."""
    q = z @ att.q.weight.T + att.q.bias
    k = keys @ att.k.weight.T + att.k.bias
    v = values @ att.v.weight.T + att.v.bias
    dh = D // H
    out = torch.zeros(B, N, D)
    for b in range(B):
        for h in range(H):
            sl = slice(h * dh, (h + 1) * dh)
            scores = q[b, :, sl] @ k[b, :, sl].T / math.sqrt(dh)          # (N, M)
            scores = scores.masked_fill(~keep[b][None, :], float("-inf"))
            out[b, :, sl] = torch.softmax(scores, dim=-1) @ v[b, :, sl]
    return out @ att.out.weight.T + att.out.bias


def test_ssta_matches_hand_written_eqs_10_11():
    att = randomise(SSTA(D, H, retrieval_dim=DR))
    z, t, r_t, r_m = inputs()
    pad = torch.tensor([[False, False, True], [False, False, False]])
    # K = [z; t; P_k(LN([R_m; R_t]))], V = [z; t; P_v(LN(R_m))], text through its LayerNorm
    text = ln(t, att.text_norm)[:, None]
    r_key = ln(torch.cat([r_m, r_t], -1), att.key_norm) @ att.key_proj.weight.T + att.key_proj.bias
    r_val = ln(r_m, att.value_norm) @ att.value_proj.weight.T + att.value_proj.bias
    keys, values = torch.cat([z, text, r_key], 1), torch.cat([z, text, r_val], 1)
    keep = torch.cat([~pad, torch.ones(B, 1 + K, dtype=torch.bool)], 1)
    expected = reference_attention(att, z, keys, values, keep)
    torch.testing.assert_close(att(z, t, r_t, r_m, pad), expected, atol=1e-5, rtol=1e-5)


def test_ssta_values_see_motion_retrieval_only():
    att = randomise(SSTA(D, H, retrieval_dim=DR))
    z, t, r_t, r_m = inputs()
    # R_t enters the keys only: with a single key slot per item, changing R_t changes the output ...
    other_rt = r_t + 1.0
    assert not torch.allclose(att(z, t, r_t, r_m), att(z, t, other_rt, r_m))
    # ... but when the retrieval keys carry all the weight, the output is P_v(LN(R_m)) whatever R_t is
    with torch.no_grad():
        att.k.weight.zero_()
        att.k.bias.zero_()
    keep_r = torch.tensor([False, False])
    out = att(z, t, r_t, r_m, pad=torch.ones(B, N, dtype=torch.bool), text_keep=keep_r)
    r_val = ln(r_m, att.value_norm) @ att.value_proj.weight.T + att.value_proj.bias
    v = r_val @ att.v.weight.T + att.v.bias                                     # equal scores: mean over items
    expected = v.mean(1, keepdim=True).expand(B, N, D) @ att.out.weight.T + att.out.bias
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(att(z, t, other_rt, r_m, pad=torch.ones(B, N, dtype=torch.bool),
                                   text_keep=keep_r), expected, atol=1e-5, rtol=1e-5)


def test_padded_keys_are_never_attended():
    att = randomise(SSTA(D, H, retrieval_dim=DR))
    z, t, r_t, r_m = inputs()
    pad = torch.tensor([[False, True, True], [False, False, True]])
    z2 = z.clone()
    z2[pad] = torch.randn(int(pad.sum()), D) * 50                              # change only padded tokens
    a, b = att(z, t, r_t, r_m, pad), att(z2, t, r_t, r_m, pad)
    torch.testing.assert_close(a[~pad], b[~pad])


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_dropped_conditions_do_not_change_the_output(variant):
    att = randomise(SSTA(D, H, retrieval_dim=DR, variant=variant))
    z, t, r_t, r_m = inputs()
    _, t2, rt2, rm2 = inputs(seed=5)
    off = torch.zeros(B, dtype=torch.bool)
    a = att(z, t, r_t, r_m, text_keep=off, retrieval_keep=off)
    b = att(z, t2, rt2, rm2, text_keep=off, retrieval_keep=off)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(att(z, t, r_t, r_m), att(z, t2, rt2, rm2))
    # all conditions dropped = self-attention over z alone
    expected = reference_attention(att, z, z, z, torch.ones(B, N, dtype=torch.bool))
    torch.testing.assert_close(a, expected, atol=1e-5, rtol=1e-5)


def test_ssta_drops_text_and_retrieval_separately():
    att = randomise(SSTA(D, H, retrieval_dim=DR))
    z, t, r_t, r_m = inputs()
    _, t2, rt2, rm2 = inputs(seed=5)
    off = torch.zeros(B, dtype=torch.bool)
    torch.testing.assert_close(att(z, t, r_t, r_m, text_keep=off), att(z, t2, r_t, r_m, text_keep=off))
    torch.testing.assert_close(att(z, t, r_t, r_m, retrieval_keep=off), att(z, t, rt2, rm2, retrieval_keep=off))
    # a per-sample flag: only sample 1 drops the text
    mixed = torch.tensor([True, False])
    a, b = att(z, t, r_t, r_m, text_keep=mixed), att(z, t2, r_t, r_m, text_keep=mixed)
    torch.testing.assert_close(a[1], b[1])
    assert not torch.allclose(a[0], b[0])


def test_official_variant_key_mlp_and_motion_values():
    att = randomise(SSTA(D, H, retrieval_dim=DR, variant="official"))
    z, t, r_t, r_m = inputs()
    slot = torch.cat([t[:, None].expand(B, K, D), r_m, r_t], -1)
    mlp = att.key_mlp
    slot_key = F.gelu(slot @ mlp[0].weight.T + mlp[0].bias) @ mlp[2].weight.T + mlp[2].bias
    slot_val = ln(r_m, att.value_norm) @ att.value_proj.weight.T + att.value_proj.bias
    keep = torch.ones(B, N + K, dtype=torch.bool)
    expected = reference_attention(att, z, torch.cat([z, slot_key], 1), torch.cat([z, slot_val], 1), keep)
    torch.testing.assert_close(att(z, t, r_t, r_m), expected, atol=1e-5, rtol=1e-5)


def test_sta_is_attention_over_tokens_and_text():
    att = randomise(STA(D, H))
    z, t, _, _ = inputs()
    pad = torch.tensor([[False, False, False], [True, False, False]])
    ctx = torch.cat([z, ln(t, att.text_norm)[:, None]], 1)
    keep = torch.cat([~pad, torch.ones(B, 1, dtype=torch.bool)], 1)
    torch.testing.assert_close(att(z, t, pad), reference_attention(att, z, ctx, ctx, keep), atol=1e-5, rtol=1e-5)
    off = torch.zeros(B, dtype=torch.bool)
    torch.testing.assert_close(att(z, t, pad, off), att(z, t * 3 + 1, pad, off))


def test_block_is_pre_norm_residual():
    block = randomise(TransformerBlock(D, H, ff_dim=6, attention="ssta", retrieval_dim=DR))
    z, t, r_t, r_m = inputs()
    x = z + block.attn(block.norm1(z), t, r_t, r_m)
    expected = x + block.ff(block.norm2(x))
    torch.testing.assert_close(block(z, None, t, r_t, r_m), expected)


def test_positional_encoding_2d_by_hand():
    pe = positional_encoding_2d(time=3, columns=2, dim=8)
    assert pe.shape == (3, 2, 8)
    # half = 4 channels per axis, frequencies 1 and 10000^(-2/4) = 0.01; columns in 0:4, time in 4:8
    def half(p):
        return [math.sin(p), math.cos(p), math.sin(0.01 * p), math.cos(0.01 * p)]
    torch.testing.assert_close(pe[2, 1], torch.tensor(half(1) + half(2)))
    torch.testing.assert_close(pe[0, 0], torch.tensor(half(0) + half(0)))
    assert not torch.equal(pe[1, 0], pe[0, 1])                 # time and column slots differ


def test_bad_arguments():
    with pytest.raises(ValueError, match="'variant'"):
        SSTA(D, H, variant="linear")
    with pytest.raises(ValueError, match="'heads'"):
        STA(6, 4)
    with pytest.raises(ValueError, match="'dim'"):
        positional_encoding_2d(2, 2, 6)
