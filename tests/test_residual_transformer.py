"""models/residual_transformer.py: layer selection, summed code-embedding input, tied weights, guidance, generation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.residual_transformer import (ResidualTransformer, ResidualTransformerConfig, active_levels,
                                         select_layers, token_map_config)

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models, one thread

C, JOINT_K, GLOBAL_K, TEXT, Q = 7, 16, 8, 12, 4      # 6 joint columns (16 codes) + a global column (8 codes), 4 levels


def tiny_cfg(**kw) -> ResidualTransformerConfig:
    base = dict(num_columns=C, num_groups=6, codebook_sizes=[JOINT_K] * 6 + [GLOBAL_K], num_quantizers=Q,
                text_dim=TEXT, layers=2, heads=2, width=32, ff_dim=64, dropout=0.0, embed_dim=8, max_tokens=12,
                cond_drop=0.0)
    return ResidualTransformerConfig(**(base | kw))


def tiny_model(seed: int = 0, **kw) -> ResidualTransformer:
    torch.manual_seed(seed)
    return ResidualTransformer(tiny_cfg(**kw)).eval()


def token_map(b: int, tp: int, q: int = Q, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, JOINT_K, (b, tp, C, q), generator=g)
    tok[:, :, 6] = torch.randint(0, GLOBAL_K, (b, tp, q), generator=g)
    return tok


def text(b: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, TEXT, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------------------
# Layer selection
# ------------------------------------------------------------------------------------------------------------------
def test_cosine_layer_schedule_hand_values():
    active = torch.tensor([6, 6, 6, 6, 2, 3])
    u = torch.tensor([0.0, 0.5, 0.9, 0.999, 0.7, 0.999])
    # l = round((1 − cos(πu/2))·(A − 2)) + 1: 1 + round(0), round(0.2929·4 = 1.17) = 1, round(0.8436·4 = 3.37) = 3,
    # round(≈4) = 4; A = 2 → always 1; A = 3, u → 1: round(≈1) + 1 = 2
    assert select_layers(active, u, "cosine").tolist() == [1, 2, 4, 5, 1, 2]


def test_uniform_layer_schedule_hand_values():
    active = torch.tensor([6, 6, 6, 3])
    u = torch.tensor([0.0, 0.5, 0.99, 0.5])
    # l = 1 + floor(u·(A − 1)): 1, 1 + floor(2.5) = 3, 1 + floor(4.95) = 5, 1 + floor(1) = 2
    assert select_layers(active, u, "uniform").tolist() == [1, 3, 5, 2]


@pytest.mark.parametrize("schedule", ["cosine", "uniform"])
def test_selected_layers_stay_within_the_active_levels(schedule):
    g = torch.Generator().manual_seed(0)
    active = torch.randint(2, 7, (2000,), generator=g)
    layers = select_layers(active, torch.rand(2000, generator=g), schedule)
    assert bool((layers >= 1).all()) and bool((layers <= active - 1).all())
    for a in range(2, 7):                                   # every residual layer of a sample can be drawn
        assert set(layers[active == a].tolist()) == set(range(1, a))


def test_uniform_schedule_is_uniform_and_cosine_favours_low_layers():
    g = torch.Generator().manual_seed(0)
    n = 20000
    active = torch.full((n,), 6)
    uni = torch.bincount(select_layers(active, torch.rand(n, generator=g), "uniform"), minlength=6)[1:] / n
    cos = torch.bincount(select_layers(active, torch.rand(n, generator=g), "cosine"), minlength=6)[1:] / n
    assert torch.allclose(uni, torch.full((5,), 0.2), atol=0.015)
    assert cos[0] + cos[1] > 0.5 and cos[4] < 0.1


def test_active_levels_read_the_quantize_dropout_levels():
    tok = token_map(3, 5)
    tok[1, :, :, 2:] = -1                                   # quantize dropout kept levels 0, 1
    tok[2, :, :, 1:] = -1                                   # base layer only
    tok[0, 4:] = -1                                         # padding of sample 0 does not count
    valid = torch.arange(5)[None] < torch.tensor([4, 5, 5])[:, None]
    assert active_levels(tok, valid).tolist() == [Q, 2, 1]


def test_training_predicts_only_present_layers():
    model = tiny_model()
    tok = token_map(4, 5)
    tok[:, :, :, 2:] = -1                                   # two levels present: every sample must predict layer 1
    loss, logs = model(tok, text(4), torch.tensor([5, 5, 3, 2]), generator=torch.Generator().manual_seed(0))
    assert logs["layer"] == 1.0 and logs["trained_frac"] == 1.0
    tok[:, :, :, 1:] = -1                                   # base only: nothing to predict, a zero loss with a graph
    loss, logs = model(tok, text(4), torch.tensor([5, 5, 3, 2]))
    assert logs["trained_frac"] == 0.0 and float(loss.detach()) == 0.0 and loss.requires_grad


# ------------------------------------------------------------------------------------------------------------------
# Input: summed code embeddings on a toy codebook
# ------------------------------------------------------------------------------------------------------------------
def toy_codebook_model() -> ResidualTransformer:
    """E_j[v] = (10^j · (v + 1)) in channel 0, j in channel 1 + j: every sum is readable by hand."""
    model = tiny_model(embed_dim=4)
    v = model.num_codes
    with torch.no_grad():
        model.token_embed.zero_()
        for j in range(Q - 1):
            model.token_embed[j, :, 0] = (10.0 ** j) * (torch.arange(v) + 1)
            model.token_embed[j, :, 1 + j] = 1.0
    return model


def test_input_is_the_sum_of_the_code_embeddings_below_the_layer():
    model = toy_codebook_model()
    tok = torch.zeros(1, 1, C, Q, dtype=torch.long)
    tok[0, 0, 0] = torch.tensor([3, 5, 7, 9])               # a joint column
    tok[0, 0, 6] = torch.tensor([2, 4, 6, 1])               # the global column: ids K_j + code
    x = model.input_embedding(tok, 3)                       # layers 0, 1, 2
    assert x[0, 0, 0].tolist() == [(3 + 1) + 10 * (5 + 1) + 100 * (7 + 1), 1.0, 1.0, 1.0]
    g = JOINT_K
    assert x[0, 0, 6].tolist() == [(g + 2 + 1) + 10 * (g + 4 + 1) + 100 * (g + 6 + 1), 1.0, 1.0, 1.0]
    x1 = model.input_embedding(tok, 1)                      # base layer only
    assert x1[0, 0, 0].tolist() == [4.0, 1.0, 0.0, 0.0]


def test_missing_codes_add_nothing_and_upper_layers_are_never_read():
    model = toy_codebook_model()
    tok = token_map(1, 3)
    tok[0, 1, 2, 1] = -1                                    # a skipped level adds a zero code
    x = model.input_embedding(tok, 2)
    assert x[0, 1, 2].tolist() == [float(tok[0, 1, 2, 0] + 1), 1.0, 0.0, 0.0]
    changed = tok.clone()
    changed[..., 2:] = 0                                    # layers ≥ l differ
    torch.testing.assert_close(model.input_embedding(changed, 2), x)
    t = text(1)
    model_r = tiny_model()
    torch.testing.assert_close(model_r.logits(changed, 2, t), model_r.logits(tok, 2, t))


def test_loss_is_cross_entropy_of_the_chosen_layer_at_valid_positions():
    model = tiny_model(num_quantizers=2)                    # Q = 2: layer 1 is always the target
    tok = token_map(3, 6, q=2)
    lengths = torch.tensor([6, 4, 2])
    t = text(3)
    loss, logs = model(tok, t, lengths)
    valid = torch.arange(6)[None] < lengths[:, None]
    logits = model.logits(tok.masked_fill(~valid[:, :, None, None], -1), 1, t, ~valid)
    expected = F.cross_entropy(logits[valid].reshape(-1, logits.shape[-1]), tok[..., 1][valid].reshape(-1))
    torch.testing.assert_close(loss, expected)
    padded = tok.clone()
    padded[1, 4:] = 3                                       # content past the lengths never reaches the loss
    torch.testing.assert_close(model(padded, t, lengths)[0], loss)


def test_tiny_overfit_loss_falls():
    torch.manual_seed(0)
    model = ResidualTransformer(tiny_cfg(num_quantizers=2))
    tok, t, lengths = token_map(2, 3, q=2), text(2), torch.tensor([3, 2])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(60):
        loss, _ = model(tok, t, lengths, generator=g)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


# ------------------------------------------------------------------------------------------------------------------
# Weight tying, vocabularies, guidance
# ------------------------------------------------------------------------------------------------------------------
def test_shared_weights_tie_each_layers_embedding_and_projection():
    model = tiny_model(num_quantizers=5)
    for layer in range(1, 4):                               # P_l = E_l for l = 1..Q−2
        assert model.projection_table(layer).data_ptr() == model.embedding_table(layer).data_ptr()
    assert model.projection_table(4).data_ptr() == model.output_proj[0].data_ptr()   # P_{Q−1}: its own table
    untied = tiny_model(num_quantizers=5, share_weight=False)
    v, e = model.num_codes, model.cfg.embed_dim
    n = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in untied.parameters()) - n == 3 * v * e
    assert untied.projection_table(1).data_ptr() != untied.embedding_table(1).data_ptr()


def test_predicting_a_layer_trains_its_shared_embedding_table():
    model = tiny_model(num_quantizers=5)
    tok, t = token_map(2, 3, q=5), text(2)
    model.logits(tok, 2, t)[..., 0].sum().backward()        # predicting layer 2 reads E_0, E_1 and projects on E_2
    grad = model.token_embed.grad
    assert all(float(grad[j].abs().sum()) > 0 for j in (0, 1, 2)) and float(grad[3].abs().sum()) == 0


def test_global_column_logits_stay_in_its_codebook():
    model = tiny_model()
    logits = model.logits(token_map(2, 3), torch.tensor([1, 3]), text(2))
    assert logits.shape == (2, 3, C, JOINT_K)
    assert torch.isinf(logits[:, :, 6, GLOBAL_K:]).all() and torch.isfinite(logits[:, :, 6, :GLOBAL_K]).all()
    assert torch.isfinite(logits[:, :, :6]).all()


def test_guidance_scale_one_is_conditional_and_zero_unconditional():
    model = tiny_model()
    tok, t = token_map(2, 3), text(2)
    cond = model.logits(tok, 2, t)
    uncond = model.logits(tok, 2, t, drop_condition=True)
    torch.testing.assert_close(model.guided_logits(tok, 2, t, guidance_scale=1.0), cond)
    torch.testing.assert_close(model.guided_logits(tok, 2, t, guidance_scale=0.0), uncond)
    finite = torch.isfinite(cond)
    torch.testing.assert_close(model.guided_logits(tok, 2, t, guidance_scale=5.0)[finite],
                               (uncond + 5 * (cond - uncond))[finite])
    assert not torch.allclose(cond, uncond)
    torch.testing.assert_close(model.logits(tok, 2, t * 7, drop_condition=True), uncond)   # text fully dropped


# ------------------------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------------------------
def test_generation_fills_exactly_the_residual_layers_inside_the_lengths():
    model = tiny_model()
    base = token_map(3, 6)[..., 0]
    lengths = torch.tensor([6, 3, 1])
    out = model.generate(base, text(3), lengths, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 6, C, Q) and out.dtype == torch.long
    valid = (torch.arange(6)[None] < lengths[:, None])[:, :, None, None].expand_as(out)
    assert bool((out[valid] >= 0).all()) and bool((out[~valid] == -1).all())
    inside = valid[..., 0]
    assert torch.equal(out[..., 0][inside], base[inside])                 # the base layer is kept as given
    assert int(out[:, :, 6].max()) < GLOBAL_K and int(out[:, :, :6].max()) < JOINT_K


def test_generation_is_deterministic_for_a_seed():
    model = tiny_model()
    base, t, lengths = token_map(2, 5)[..., 0], text(2), torch.tensor([5, 2])
    a = model.generate(base, t, lengths, generator=torch.Generator().manual_seed(3))
    b = model.generate(base, t, lengths, generator=torch.Generator().manual_seed(3))
    c = model.generate(base, t, lengths, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_greedy_generation_follows_the_guided_argmax_layer_by_layer():
    model = tiny_model()
    base, t, lengths = token_map(2, 4)[..., 0], text(2), torch.tensor([4, 3])
    out = model.generate(base, t, lengths, topk_ratio=1.0, generator=torch.Generator().manual_seed(0))
    valid = torch.arange(4)[None] < lengths[:, None]
    partial = out.clone()
    for level in range(1, Q):
        partial[..., level:] = -1
        expected = model.guided_logits(partial, level, t, ~valid, 5.0).argmax(-1)
        assert torch.equal(out[..., level][valid], expected[valid])
        partial[..., level] = out[..., level]


def test_generation_accepts_a_full_token_map_and_uses_its_base_layer():
    model = tiny_model()
    full, t, lengths = token_map(2, 4), text(2), torch.tensor([4, 2])
    a = model.generate(full, t, lengths, generator=torch.Generator().manual_seed(0))
    b = model.generate(full[..., 0], t, lengths, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------------------------
# Config and bad input
# ------------------------------------------------------------------------------------------------------------------
def test_config_rebuilds_the_model_from_a_checkpoint_dict():
    from utils.config import from_dict, to_dict

    model = tiny_model()
    rebuilt = ResidualTransformer(from_dict(ResidualTransformerConfig, to_dict(model.cfg)))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    tok, t = token_map(1, 3), text(1)
    torch.testing.assert_close(rebuilt.logits(tok, 1, t), model.logits(tok, 1, t))


def test_token_map_config_reads_the_tokenizer():
    from models.rvq import RVQConfig, RVQVAE2D
    from tests.tiny_stages import tiny_rvq_model_cfg

    rvq = RVQVAE2D(RVQConfig(**tiny_rvq_model_cfg(global_branch=True), num_quantizers=3))
    assert token_map_config(rvq) == dict(num_columns=7, num_groups=6, codebook_sizes=[16] * 7, num_quantizers=3)


@pytest.mark.parametrize("call, name", [
    (lambda m: m.generate(token_map(2, 4)[..., 0], text(2), torch.tensor([4, 5])), "lengths"),
    (lambda m: m.generate(token_map(2, 4)[..., 0], text(2), torch.tensor([0, 2])), "lengths"),
    (lambda m: m.generate(token_map(2, 4)[..., 0], text(2), torch.tensor([4, 2]), guidance_scale=-1.0),
     "guidance_scale"),
    (lambda m: m.generate(token_map(2, 4)[..., 0], text(2), torch.tensor([4, 2]), temperature=0.0), "temperature"),
    (lambda m: m.generate(token_map(2, 4)[..., 0] + JOINT_K, text(2), torch.tensor([4, 2])), "base_tokens"),
    (lambda m: m.generate(token_map(2, 4), text(3), torch.tensor([4, 2])), "t"),
    (lambda m: m.logits(token_map(2, 4), Q, text(2)), "layer"),
    (lambda m: m.logits(token_map(2, 4)[..., :2], 1, text(2)), "tokens"),
    (lambda m: m(token_map(2, 4), text(2), torch.tensor([4, 9])), "lengths_tokens"),
])
def test_bad_input_is_a_one_line_value_error(call, name):
    with pytest.raises(ValueError, match=f"argument '{name}'") as err:
        call(tiny_model())
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kw, key", [
    (dict(num_quantizers=1), "num_quantizers"), (dict(codebook_sizes=[16] * 6), "codebook_sizes"),
    (dict(layer_schedule="linear"), "layer_schedule"), (dict(sampler="beam"), "sampler"),
    (dict(cond_drop=1.5), "cond_drop"), (dict(width=30), "width"),
])
def test_bad_config_names_the_key(kw, key):
    with pytest.raises(ValueError, match=f"model.{key}"):
        ResidualTransformer(tiny_cfg(**kw))
