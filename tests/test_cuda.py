"""The CUDA paths of generation (issue #16): run on a GPU machine, skipped elsewhere (`pytest -m cuda` selects them
with the trainer's CUDA tests; `python -m utils.benchmarks.device_check` runs them first on a lent GPU).

Tiny components of the real classes on cuda:0. What they pin down: the fast fp32 path keeps the naive path's
tokens, per-item seeds hold in a batch, the bf16 paths stay inside the stated tolerance, the CUDA defaults (SDPA in
the bf16 copies, no row slices), torch.compile with CUDA graphs keeps the logits, retrieval ranks as on the CPU, and
the benchmark script runs end to end on the GPU.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from tests.test_generation_speed import PROMPTS, _call, check_bf16_tolerance, naive_and_fast
from utils.benchmarks import generate as bench

# REMOMASK_CUDA_TESTS_DEVICE=cpu rehearses these tests on a CPU (the device-specific expectations follow the device)
DEVICE = os.environ.get("REMOMASK_CUDA_TESTS_DEVICE", "cuda")
ON_CUDA = DEVICE.startswith("cuda")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="needs CUDA")]

@pytest.fixture(scope="module")
def components():
    return bench.tiny_components(DEVICE)


def test_cuda_fast_fp32_keeps_the_naive_tokens(components):
    fast, out, slow = naive_and_fast(components)
    assert torch.equal(out.tokens, slow.tokens)
    assert out.tokens.device.type == "cpu" and fast.device.type == torch.device(DEVICE).type


def test_cuda_per_item_seeds_hold_in_a_batch(components):
    pipe = bench.make_pipeline(components)
    batch = _call(pipe)
    alone = pipe(PROMPTS[1:2], lengths=[120], steps=3, seed=8)       # item 1 of the batch: seed 7 + 1
    assert torch.equal(alone.tokens[0], batch.tokens[1, :alone.tokens.shape[1]])


def test_cuda_defaults_are_sdpa_and_whole_passes(components):
    pipe = bench.make_pipeline(components, precision="bf16")
    assert pipe.rows_per_pass() == (None if ON_CUDA else 8)
    copy = pipe.stage_module("mask")
    kernels = {m.kernel for m in copy.modules() if hasattr(m, "kernel")}
    assert kernels == {"sdpa" if ON_CUDA else "matmul"} and next(copy.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("precision", ["bf16", "bf16-autocast"])
def test_cuda_bf16_stays_within_the_stated_tolerance(components, precision):
    check_bf16_tolerance(components, precision)


def test_cuda_graphs_compile_keeps_the_logits():
    fresh = bench.tiny_components(DEVICE)                      # compile works in place
    eager = bench.tiny_components(DEVICE)
    pipe = bench.make_pipeline(fresh).compile()                # "reduce-overhead": CUDA graphs
    assert pipe.compile_options["mode"] == ("reduce-overhead" if ON_CUDA else "default") and pipe.pad_to == 49
    g = torch.Generator(device=DEVICE).manual_seed(0)
    mask = eager["mask"].eval()
    t = torch.randn(2, mask.cfg.text_dim, device=DEVICE, generator=g)
    r = torch.randn(2, 1, mask.cfg.retrieval_dim, device=DEVICE, generator=g)
    tokens = torch.full((2, 49, mask.cfg.num_columns), -2, device=DEVICE)
    with torch.no_grad():
        want = mask.guided_logits(tokens, t, r, r)
        for _ in range(3):                                     # warm-up, recording, replay
            got = pipe.stage_module("mask").guided_logits(tokens, t, r, r).clone()
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], atol=1e-4, rtol=1e-4)
    a, b = _call(pipe), _call(bench.make_pipeline(eager, pad_to=49))
    assert float((a.tokens == b.tokens).float().mean()) > 0.9


def test_cuda_retrieval_ranks_as_on_the_cpu():
    on_cpu = bench.simulated_database(300, dim=16)
    on_device = bench.simulated_database(300, dim=16, device=DEVICE)
    q = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    a, b = on_device.query(q.to(DEVICE), k=3), on_cpu.query(q, k=3)
    assert torch.equal(a.indices.cpu(), b.indices)
    torch.testing.assert_close(a.scores.cpu(), b.scores, atol=1e-5, rtol=1e-5)


def test_cuda_generation_benchmark_runs_tiny_with_compile(tmp_path):
    path = tmp_path / "gen.json"
    assert bench.main(["--tiny", "--device", DEVICE, "--threads", "1", "--batches", "2", "--repeats", "1", "--compile", "--skip-scaling",
                       "--db-rows", "30", "--silent", "--force-bf16", "--json", str(path)]) == 0
    run = json.loads(path.read_text())["runs"]["2"]
    assert run["naive_equals_fast_fp32"] is True and run["compile_token_agreement_vs_bf16"] > 0.8
    assert run["fast_bf16_compile"]["stages"]["total"]["median"] > 0
