"""models/sampling.py: cosine schedule, top-k by ratio, temperature, categorical / Gumbel draws, guidance combine."""
from __future__ import annotations

import math

import pytest
import torch

from models.sampling import (apply_temperature, check_generation_args, cosine_schedule, frames_to_token_steps,
                             guidance_combine, masked_counts, sample, sample_categorical, sample_gumbel,
                             top_k_filter, topk_keep)

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny tensors, one thread

NEG = float("-inf")


def test_cosine_schedule_values():
    got = cosine_schedule(torch.tensor([0.0, 1 / 3, 0.5, 1.0]))
    torch.testing.assert_close(got, torch.tensor([1.0, math.sqrt(3) / 2, math.sqrt(0.5), 0.0]), atol=1e-6, rtol=0)


def test_masked_counts_match_the_reference_example():
    # reference.md §6.1: len 49, S = 10 -> n = [49, 48, 46, 42, 38, 31, 24, 17, 9, 1]
    n = masked_counts(torch.tensor([49, 8]), steps=10)
    assert n[:, 0].tolist() == [49, 48, 46, 42, 38, 31, 24, 17, 9, 1]
    # len 8 by hand: round(8·cos(i·10°)) = 8, 7.88->8, 7.52->8, 6.93->7, 6.13->6, 5.14->5, 4, 2.74->3, 1.39->1,
    # 0 -> clamped to 1
    assert n[:, 1].tolist() == [8, 8, 8, 7, 6, 5, 4, 3, 1, 1]


def test_masked_counts_single_step_predicts_everything():
    assert masked_counts(torch.tensor([12, 3]), steps=1).tolist() == [[12, 3]]


def test_frames_to_token_steps_divides_by_four():
    assert frames_to_token_steps(torch.tensor([196, 40, 7, 4])).tolist() == [49, 10, 1, 1]
    with pytest.raises(ValueError, match="'frames'"):
        frames_to_token_steps(torch.tensor([3]))


@pytest.mark.parametrize("size,ratio,k", [(256, 0.9, 26), (16, 0.9, 2), (10, 0.9, 1), (16, 0.5, 8), (16, 1.0, 1),
                                          (512, 0.9, 52)])
def test_topk_keep_is_ceil_of_the_kept_fraction(size, ratio, k):
    # reference.md §6.1: k = ceil(0.1·K) for topkr 0.9 (52 for K = 512, 26 for K = 256); at least one kept
    assert int(topk_keep(size, ratio)) == k


def test_top_k_filter_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5], [0.0, -1.0, 5.0, 4.0]])
    got = top_k_filter(logits, 2)
    assert got.tolist() == [[NEG, 3.0, 2.0, NEG], [NEG, NEG, 5.0, 4.0]]


def test_top_k_filter_per_row_k_and_ties():
    logits = torch.tensor([[2.0, 2.0, 1.0], [3.0, 1.0, 2.0]])
    got = top_k_filter(logits, torch.tensor([1, 3]))
    assert got.tolist() == [[2.0, 2.0, NEG], [3.0, 1.0, 2.0]]     # the tie with the 1st largest survives


def test_temperature_divides_logits():
    logits = 2.0 * torch.log(torch.tensor([1.0, 3.0]))
    probs = torch.softmax(apply_temperature(logits, 2.0), dim=-1)
    torch.testing.assert_close(probs, torch.tensor([0.25, 0.75]))


@pytest.mark.parametrize("sampler", ["categorical", "gumbel"])
def test_samplers_follow_softmax_and_never_draw_minus_inf(sampler):
    logits = torch.log(torch.tensor([0.25, 0.75, 1.0])).masked_fill(torch.tensor([False, False, True]), NEG)
    rows = logits.expand(20000, 3)
    draws = sample(rows, sampler, torch.Generator().manual_seed(0))
    assert draws.shape == (20000,)
    freq = torch.bincount(draws, minlength=3).float() / 20000
    assert freq[2] == 0
    assert abs(float(freq[1]) - 0.75) < 0.015


@pytest.mark.parametrize("fn", [sample_categorical, sample_gumbel])
def test_samplers_are_deterministic_for_a_generator_seed(fn):
    logits = torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(3))
    a = fn(logits, torch.Generator().manual_seed(7))
    b = fn(logits, torch.Generator().manual_seed(7))
    c = fn(logits, torch.Generator().manual_seed(8))
    assert a.shape == (4, 5) and torch.equal(a, b) and not torch.equal(a, c)


def test_guidance_combine_by_hand():
    cond = torch.tensor([1.0, 2.0, NEG])
    uncond = torch.tensor([0.0, 4.0, NEG])
    # uncond + 4·(cond − uncond): 0 + 4·1 = 4; 4 + 4·(−2) = −4; −inf stays −inf
    assert guidance_combine(cond, uncond, 4.0).tolist() == [4.0, -4.0, NEG]
    assert torch.equal(guidance_combine(cond, uncond, 1.0), cond)
    assert torch.equal(guidance_combine(cond, uncond, 0.0), uncond)


def test_paper_eq17_scale_is_code_scale_minus_one():
    cond, uncond = torch.tensor([0.3, -1.2]), torch.tensor([0.1, 0.4])
    s_paper = 4.0
    paper = (1 + s_paper) * cond - s_paper * uncond           # paper Eq. 17
    torch.testing.assert_close(guidance_combine(cond, uncond, s_paper + 1), paper)


@pytest.mark.parametrize("kwargs,name", [
    (dict(steps=0), "'steps'"), (dict(guidance_scale=-0.5), "'guidance_scale'"),
    (dict(topk_ratio=0.0), "'topk_ratio'"), (dict(topk_ratio=1.2), "'topk_ratio'"),
    (dict(temperature=0.0), "'temperature'")])
def test_bad_generation_arguments_name_the_argument(kwargs, name):
    args = dict(steps=10, guidance_scale=4.0, topk_ratio=0.9, temperature=1.0) | kwargs
    with pytest.raises(ValueError, match=name) as err:
        check_generation_args(**args)
    assert "\n" not in str(err.value)


def test_column_vocabulary_by_hand():
    import torch

    from models.sampling import register_column_vocabulary

    m = torch.nn.Module()
    v = register_column_vocabulary(m, num_groups=2, codebook_sizes=[3, 3, 5], has_global_column=True)
    assert v == 8 and m.k_max == 5                              # joint codes 0..2, global codes 3..7
    assert m.column_offsets.tolist() == [0, 0, 3]
    assert m.column_vocab.tolist() == [[0, 1, 2, 2, 2], [0, 1, 2, 2, 2], [3, 4, 5, 6, 7]]
    assert m.column_valid.tolist() == [[True] * 3 + [False] * 2] * 2 + [[True] * 5]
    assert not any(name in m.state_dict() for name in ("column_vocab", "column_valid"))   # not in checkpoints
    assert register_column_vocabulary(torch.nn.Module(), 2, [3, 3], has_global_column=False) == 3
