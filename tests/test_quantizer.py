"""ResidualVQ (models/quantizer.py): lookup, straight-through, EMA/reset, quantize dropout, index ↔ code round trips."""
from __future__ import annotations

import math

import pytest
import torch

from models.quantizer import Codebook, ResidualVQ


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models, one thread


def set_codebook(book: Codebook, codes) -> None:
    codes = torch.as_tensor(codes, dtype=torch.float32)
    book.codebook.copy_(codes)
    book.code_sum.copy_(codes)
    book.code_count.fill_(1.0)
    book.initted.fill_(True)


def test_nearest_code_is_squared_l2_argmin():
    book = Codebook(3, 2).eval()
    set_codebook(book, [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    x = torch.tensor([[0.1, 0.1], [0.9, -0.3], [0.2, 1.4], [0.6, 0.9]])
    # hand: [0,0] closest for row 0; [1,0] for row 1; [0,2] for row 2 (d²=0.04+0.36=0.40 vs 1.25+... );
    # row 3: d² to codes = 0.36+0.81=1.17, 0.16+0.81=0.97, 0.36+1.21=1.57 -> code 1
    assert book.select(x).tolist() == [0, 1, 2, 1]
    d = book.distances(x)
    torch.testing.assert_close(d[3], torch.tensor([1.17, 0.97, 1.57]))


def test_residual_levels_quantize_what_the_previous_level_left():
    rvq = ResidualVQ(2, 2, 1, quantize_dropout=0.0).eval()
    set_codebook(rvq.layers[0], [[0.0], [4.0]])
    set_codebook(rvq.layers[1], [[-0.5], [0.5]])
    x = torch.tensor([[[3.7], [0.6], [4.4]]])            # (N=1, T=3, d=1)
    q, idx, commit, _ = rvq(x)
    # level 0: 3.7->4 (r=-0.3 -> -0.5), 0.6->0 (r=0.6 -> 0.5), 4.4->4 (r=0.4 -> 0.5)
    assert idx[0].tolist() == [[1, 0], [0, 1], [1, 1]]
    torch.testing.assert_close(q[0, :, 0], torch.tensor([3.5, 0.5, 4.5]))
    # commitment: mean over levels of MSE(r_l, y_l)
    l0 = ((3.7 - 4) ** 2 + 0.6 ** 2 + 0.4 ** 2) / 3
    l1 = ((-0.3 + 0.5) ** 2 + (0.6 - 0.5) ** 2 + (0.4 - 0.5) ** 2) / 3
    assert float(commit) == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_straight_through_gradient_is_identity_and_value_is_code_sum():
    torch.manual_seed(0)
    rvq = ResidualVQ(3, 8, 4, quantize_dropout=0.0).eval()
    x = torch.randn(2, 5, 4, requires_grad=True)
    q, idx, _, _ = rvq(x)
    w = torch.randn_like(q)
    (q * w).sum().backward()
    torch.testing.assert_close(x.grad, w)                 # d q / d x = identity
    assert torch.equal(q.detach(), rvq.decode_indices(idx))   # value = Σ codes, bit for bit


def test_commitment_gradient_pulls_encoder_output_towards_code():
    rvq = ResidualVQ(1, 1, 1, quantize_dropout=0.0).eval()
    set_codebook(rvq.layers[0], [[1.0]])
    x = torch.tensor([[[3.0]]], requires_grad=True)
    _, _, commit, _ = rvq(x)
    commit.backward()
    assert float(commit.detach()) == pytest.approx(4.0)
    assert float(x.grad) == pytest.approx(2 * (3.0 - 1.0))    # d/dx (x − 1)²
    assert rvq.layers[0].codebook.grad is None                 # codes are not learned by gradient


def test_ema_update_matches_hand_computation():
    book = Codebook(2, 1, mu=0.5).train()
    set_codebook(book, [[0.0], [10.0]])
    book.code_count.copy_(torch.tensor([4.0, 4.0]))
    book.code_sum.copy_(torch.tensor([[0.0], [40.0]]))
    x = torch.tensor([[1.0], [2.0], [9.0]])
    idx = book.select(x)
    assert idx.tolist() == [0, 0, 1]
    book.ema_update(x, idx)
    # sum0 = 0.5·0 + 0.5·3 = 1.5, count0 = 0.5·4 + 0.5·2 = 3 -> code 0.5
    # sum1 = 0.5·40 + 0.5·9 = 24.5, count1 = 0.5·4 + 0.5·1 = 2.5 -> code 9.8
    torch.testing.assert_close(book.code_count, torch.tensor([3.0, 2.5]))
    torch.testing.assert_close(book.code_sum, torch.tensor([[1.5], [24.5]]))
    torch.testing.assert_close(book.codebook, torch.tensor([[0.5], [9.8]]))


def test_dead_code_is_replaced_by_a_batch_vector():
    torch.manual_seed(0)
    book = Codebook(3, 2, mu=0.5).train()
    set_codebook(book, [[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]])
    book.code_count.copy_(torch.tensor([2.0, 2.0, 1.5]))     # code 2: 0.5·1.5 + 0 = 0.75 < 1 after the step
    x = torch.tensor([[0.1, 0.0], [0.9, 1.0], [0.0, 0.2], [1.1, 0.9]])
    idx = book.select(x)
    assert 2 not in idx.tolist()
    book.ema_update(x, idx)
    assert float(book.code_count[2]) == pytest.approx(0.75)
    replaced = book.codebook[2]
    assert any(torch.equal(replaced, row) for row in x), "dead code must become one of the batch vectors"
    # live codes keep their EMA value sum/count
    torch.testing.assert_close(book.codebook[:2], book.code_sum[:2] / book.code_count[:2, None])


def test_first_training_batch_initialises_codebook_from_data():
    torch.manual_seed(0)
    rvq = ResidualVQ(2, 4, 3, quantize_dropout=0.0, mu=0.99).train()
    assert not bool(rvq.layers[0].initted)
    x = torch.randn(1, 10, 3) * 5 + 20
    rvq(x)
    assert bool(rvq.layers[0].initted) and bool(rvq.layers[1].initted)
    # every level-0 code is a batch vector moved by at most one EMA step towards the mean of its cluster
    book = rvq.layers[0].codebook
    dist_to_batch = torch.cdist(book, x[0]).min(dim=1).values
    assert float(dist_to_batch.max()) < 0.5 * float(x.std())


def test_init_tiles_with_noise_when_batch_is_smaller_than_codebook():
    torch.manual_seed(0)
    book = Codebook(8, 4)
    x = torch.randn(3, 4)
    book.init_from(x)
    d = torch.cdist(book.codebook, x).min(dim=1).values
    assert float(d.max()) < 0.05                       # noise 0.01/√4 per coordinate
    assert torch.unique(book.codebook, dim=0).shape[0] == 8


def test_quantize_dropout_keeps_a_uniform_number_of_leading_levels():
    torch.manual_seed(0)
    rvq = ResidualVQ(6, 4, 2, quantize_dropout=1.0).train()
    seen = []
    for _ in range(300):
        _, idx, _, stats = rvq(torch.randn(2, 3, 2))
        kept = (idx[0, 0] >= 0).int()
        n = int(kept.sum())
        assert kept.tolist() == [1] * n + [0] * (6 - n)          # only the leading levels, the rest is −1
        assert bool((idx[..., n:] == -1).all()) and bool((idx[..., :n] >= 0).all())
        assert stats.active.tolist() == kept.float().tolist()
        seen.append(n)
    counts = torch.bincount(torch.tensor(seen), minlength=7)[1:]
    assert bool((counts > 25).all()), f"each of 1..6 levels should be drawn about 50 times, got {counts.tolist()}"


def test_no_quantize_dropout_in_eval_or_with_p_zero():
    torch.manual_seed(0)
    for rvq in (ResidualVQ(6, 4, 2, quantize_dropout=1.0).eval(), ResidualVQ(6, 4, 2, quantize_dropout=0.0).train()):
        for _ in range(5):
            _, idx, _, _ = rvq(torch.randn(2, 3, 2))
            assert bool((idx >= 0).all())


def test_index_code_round_trip_and_minus_one_is_zero():
    torch.manual_seed(0)
    rvq = ResidualVQ(3, 5, 4, quantize_dropout=0.0).eval()
    idx = torch.tensor([[[0, 4, -1], [2, -1, -1]]])             # (N=1, T=2, Q=3)
    codes = rvq.codes_from_indices(idx)
    assert codes.shape == (3, 1, 2, 4)
    torch.testing.assert_close(codes[0, 0, 0], rvq.layers[0].codebook[0])
    torch.testing.assert_close(codes[1, 0, 0], rvq.layers[1].codebook[4])
    assert bool((codes[2] == 0).all()) and bool((codes[1, 0, 1] == 0).all())
    expected = rvq.layers[0].codebook[[0, 2]] + torch.stack([rvq.layers[1].codebook[4], torch.zeros(4)])
    torch.testing.assert_close(rvq.decode_indices(idx)[0], expected)


def test_usage_stats_perplexity_and_live_fraction():
    rvq = ResidualVQ(1, 4, 1, quantize_dropout=0.0).eval()
    set_codebook(rvq.layers[0], [[0.0], [1.0], [2.0], [3.0]])
    rvq.layers[0].code_count.copy_(torch.tensor([5.0, 1.0, 0.5, 0.0]))
    x = torch.tensor([[[0.0], [1.0], [0.1], [1.1]]])            # codes 0, 1 used twice each -> perplexity 2
    _, _, _, stats = rvq(x)
    assert float(stats.perplexity[0]) == pytest.approx(2.0, rel=1e-4)
    assert float(stats.used[0]) == pytest.approx(0.5)
    assert float(stats.live[0]) == pytest.approx(0.5)
    assert stats.as_dict("joint/")["joint/perplexity/l0"] == pytest.approx(2.0, rel=1e-4)


def test_ema_statistics_are_saved_in_the_state_dict():
    torch.manual_seed(0)
    rvq = ResidualVQ(2, 4, 3).train()
    for _ in range(3):
        rvq(torch.randn(2, 8, 3))
    state = rvq.state_dict()
    for key in ("layers.0.code_sum", "layers.0.code_count", "layers.1.initted", "layers.1.codebook"):
        assert key in state
    fresh = ResidualVQ(2, 4, 3)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.layers[1].code_count, rvq.layers[1].code_count)
    assert bool(fresh.layers[0].initted)


def test_gumbel_sampling_is_stochastic_in_training_only():
    torch.manual_seed(0)
    book = Codebook(4, 2, sample="gumbel", gumbel_temperature=0.5)
    set_codebook(book, [[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1]])
    x = torch.zeros(200, 2) + 0.05
    book.train()
    assert len(set(book.select(x).tolist())) > 1
    book.eval()
    assert len(set(book.select(x).tolist())) == 1


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 3), r"'x' must have shape \(N, T, 4\)"),
    (torch.zeros(2, 3, 5), r"'x' must have shape \(N, T, 4\), got \(2, 3, 5\)"),
])
def test_bad_input_names_the_argument(bad, match):
    with pytest.raises(ValueError, match=match):
        ResidualVQ(2, 4, 4)(bad)


def test_bad_indices_are_refused():
    rvq = ResidualVQ(2, 4, 4)
    with pytest.raises(ValueError, match=r"'indices' must lie in -1..3"):
        rvq.decode_indices(torch.tensor([[[0, 4]]]))
    with pytest.raises(ValueError, match=r"'indices' must have shape \(N, T, 2\)"):
        rvq.decode_indices(torch.tensor([[[0, 1, 2]]]))
    with pytest.raises(ValueError, match="integer"):
        rvq.decode_indices(torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="'mu'"):
        Codebook(4, 4, mu=1.5)
    assert math.isfinite(float(rvq.layers[0].codebook.sum()))


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import datetime

    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(0)                                 # same initial buffers (DDP would broadcast them)
        rvq = ResidualVQ(4, 8, 3, quantize_dropout=0.5).train()
        torch.manual_seed(100 + rank)                         # rank-specific data and dropout draws
        levels = []
        for _ in range(6):
            _, idx, _, _ = rvq(torch.randn(2, 5, 3) + rank)
            levels.append(int((idx[0, 0] >= 0).sum()))
        torch.save({"state": rvq.state_dict(), "levels": levels}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_codebooks_stay_identical_across_ddp_ranks(tmp_path):
    """Under torchrun the EMA statistics are all-reduced, resets and the quantize-dropout draw come from rank 0."""
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a["levels"] == b["levels"] and len(set(a["levels"])) > 1     # dropout happened, on both ranks alike
    for key, value in a["state"].items():
        assert torch.equal(value, b["state"][key]), key
