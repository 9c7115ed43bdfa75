"""The fast generation path keeps the naive path's outputs (issue #16); no timing is asserted.

Tiny components of the real classes (utils.benchmarks.generate.tiny_components). fp32: equal tokens for a seed;
bf16: within the tolerances stated in BENCHMARKS.md "Generation (issue #16)".
"""
from __future__ import annotations

import json

import pytest
import torch

from utils.benchmarks import generate as bench

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a person walks forward", "someone jumps up and down", "a man waves his left hand"]


@pytest.fixture(scope="module")
def components():
    return bench.tiny_components()


def _call(pipe, prompts=PROMPTS, lengths=(196, 120, 64), steps=3, seed=7):
    return pipe(list(prompts), lengths=list(lengths), steps=steps, seed=seed)


def naive_and_fast(components):
    """(fast pipeline, its fp32 output, the naive path's output) for the same prompts and seeds (also test_cuda)."""
    fast = bench.make_pipeline(components)
    out = _call(fast)
    with bench.naive_path(fast, PROMPTS) as naive:
        slow = _call(naive)
    return fast, out, slow


def check_bf16_tolerance(components, precision: str = "bf16"):
    """The stated bf16 tolerance (BENCHMARKS.md) of `precision` against fp32 on the same prompts and seeds."""
    fp32 = bench.make_pipeline(components)
    low = bench.make_pipeline(components, precision=precision)
    a, b = _call(fp32), _call(low)
    tol = bench.bf16_tolerance(fp32, PROMPTS, 196, 3, a, b)
    assert tol["text_rel_err"] < 0.02 and tol["decode_rel_err"] < 0.02
    assert tol["mask_logit_rel_err"] < 0.05 and tol["residual_logit_rel_err"] < 0.05
    assert tol["mask_prob_tv"] < 0.01 and tol["residual_prob_tv"] < 0.01
    assert tol["token_agreement_all_levels"] > 0.8
    assert a.features.dtype == b.features.dtype == torch.float32


def test_naive_path_gives_the_fast_fp32_tokens(components):
    fast, out, slow = naive_and_fast(components)
    assert torch.equal(out.tokens, slow.tokens)
    torch.testing.assert_close(out.features, slow.features, atol=1e-5, rtol=1e-5)
    again = _call(fast)                        # the naive patches are gone afterwards
    assert torch.equal(again.tokens, out.tokens)
    assert "guided_logits" not in fast.mask.__dict__ and "generate" not in fast.residual.__dict__


def _pass_inputs(components, b: int, tp: int, seed: int):
    """(mask, residual, t, r, all-[MASK] tokens, generator) for one guided pass of the tiny transformers."""
    mask, residual = components["mask"].eval(), components["residual"].eval()
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(b, mask.cfg.text_dim, generator=g)
    r = torch.randn(b, 1, mask.cfg.retrieval_dim, generator=g)
    return mask, residual, t, r, torch.full((b, tp, mask.cfg.num_columns), -2), g


def test_two_pass_guidance_equals_the_doubled_batch(components):
    mask, residual, t, r, tokens, g = _pass_inputs(components, b=2, tp=5, seed=0)
    b, tp, c = 2, 5, mask.cfg.num_columns
    with torch.no_grad():
        torch.testing.assert_close(bench.two_pass_mask_guidance(mask)(tokens, t, r, r),
                                   mask.guided_logits(tokens, t, r, r), atol=1e-5, rtol=1e-5)
        full = torch.randint(0, 16, (b, tp, c, residual.cfg.num_quantizers), generator=g)
        torch.testing.assert_close(bench.two_pass_residual_guidance(residual)(full, 1, t),
                                   residual.guided_logits(full, 1, t), atol=1e-5, rtol=1e-5)


def test_static_padding_keeps_the_tokens(components):
    plain = bench.make_pipeline(components)
    padded = bench.make_pipeline(components, pad_to=49)
    a, b = _call(plain, lengths=(120, 64, 80)), _call(padded, lengths=(120, 64, 80))
    assert a.tokens.shape == b.tokens.shape and torch.equal(a.tokens, b.tokens)


def test_cached_text_and_retrieval_give_the_uncached_result(components):
    pipe = bench.make_pipeline(components)
    bench.clear_caches(pipe)
    cold = _call(pipe)
    warm = _call(pipe)                                 # text features and retrievals now come from the caches
    assert len(pipe.retrieval._store) == len(PROMPTS)
    assert torch.equal(cold.tokens, warm.tokens)
    pipe.retrieval.cache = False
    try:
        assert torch.equal(_call(pipe).tokens, cold.tokens)
    finally:
        pipe.retrieval.cache = True
    res = pipe.retrieval(PROMPTS[::-1] + PROMPTS[:1])  # order and repeats are kept
    direct = pipe.retrieval._query(PROMPTS[::-1] + PROMPTS[:1])
    assert torch.equal(res.indices, direct.indices) and torch.equal(res.r_m, direct.r_m)


def test_bf16_stays_within_the_stated_tolerance(components):
    check_bf16_tolerance(components)


def test_bad_precision_is_a_one_line_error(components):
    from models.pipeline import PipelineError

    with pytest.raises(PipelineError, match="precision"):
        bench.make_pipeline(components, precision="fp8")
    with pytest.raises(PipelineError, match="bf16_stages"):
        bench.make_pipeline(components, precision="bf16", bf16_stages=("mask", "nope"))


def test_benchmark_script_runs_tiny_and_writes_json(tmp_path, capsys):
    path = tmp_path / "gen.json"
    rc = bench.main(["--tiny", "--quick", "--threads", "1", "--batches", "2", "--db-rows", "30", "--db-sizes", "30",
                     "--scaling-lengths", "64", "--scaling-batches", "2", "--silent", "--force-bf16", "--json",
                     str(path)])
    assert rc == 0
    data = json.loads(path.read_text())
    assert data["bf16_skipped"] is None
    run = data["runs"]["2"]
    assert run["naive_equals_fast_fp32"] is True and run["naive_fast_fp32_token_agreement"] == 1.0
    assert set(run) >= {"naive", "fast_fp32", "fast_bf16", "flops", "bf16_tolerance"}
    assert set(run["fast_fp32"]["stages"]) >= {*bench.STAGES, "total"}
    assert data["matmul_gflops"]["fp32"] > 0 and "scaling" in data
    assert "whole pipeline" in capsys.readouterr().out


def test_benchmark_skips_bf16_where_it_is_emulated(tmp_path, capsys, monkeypatch):
    reason = "this CPU (AVX2) has no bf16 matrix instructions"
    monkeypatch.setattr(bench, "bf16_slow_reason", lambda device: reason)
    path = tmp_path / "gen.json"
    assert bench.main(["--tiny", "--quick", "--threads", "1", "--batches", "2", "--db-rows", "30", "--db-sizes", "30",
                       "--scaling-lengths", "64", "--scaling-batches", "2", "--silent", "--compile", "--json",
                       str(path), "--plot", str(tmp_path / "gen.png")]) == 0
    data = json.loads(path.read_text())
    run = data["runs"]["2"]
    assert data["bf16_skipped"] == reason
    assert {"naive", "fast_fp32"} <= set(run) and not any(k.startswith("fast_bf16") for k in run)
    assert "bf16_tolerance" not in run and not any(k.startswith("bf16") for k in run["attention"])
    assert data["scaling"]["path"] == "fast_fp32" and "compile_mode" not in data
    out = capsys.readouterr().out
    assert f"bf16 paths not timed: {reason}" in out and "fast bf16" not in out
    assert "--compile ignored" in out and "scaling table on the fast fp32 path" in out      # nothing dropped silently
    from PIL import Image

    with Image.open(tmp_path / "gen.png") as im:                    # --plot: bars by stage + the scaling panels
        assert im.format == "PNG" and im.width > 2 * im.height


def test_plot_generation_stacks_seconds_per_sample_and_refuses_other_files(tmp_path, capsys):
    from utils.benchmarks import plot_generation as pg

    def stages(total, **kw):
        return {"stages": {"total": {"median": total}, **{k: {"median": v} for k, v in kw.items()}}}

    results = {"device": "cpu", "runs": {"2": {"fast_fp32": stages(1.0, text=0.1, mask=0.5, decode=0.2),
                                               "naive": stages(1.4, mask=1.0)}}}
    rows = pg.per_sample_stages(results)
    assert [(b, p) for b, p, _ in rows] == [("2", "naive"), ("2", "fast_fp32")]      # drawing order
    fast = rows[1][2]
    assert fast["mask"] == pytest.approx(0.25) and fast["total"] == pytest.approx(0.5)  # per sample (batch 2)
    assert fast["other"] == pytest.approx(0.1)                      # total − the stages timed
    out = pg.plot_generation(results, tmp_path / "p.png")
    assert out.is_file() and not list(tmp_path.glob(".*.tmp*"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"date": "d"}))
    assert pg.main([str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("bad.json: not a utils.benchmarks.generate --json result (no 'runs')")
    assert len(err.splitlines()) == 1
    bad.write_text("{not json")
    assert pg.main([str(bad)]) == 2 and "cannot be read as JSON" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [(["--batches", "0"], "--batches"), (["--frames", "300"], "--frames"),
                                            (["--device", "tpu"], "--device"), (["--batches", "a"], "--batches")])
def test_bad_arguments_are_one_line_errors(flags, message, capsys):
    assert bench.main(["--tiny", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_eval_driver_benchmark_counts_the_protocol_samples(tmp_path):
    from utils.benchmarks import eval_t2m

    path = tmp_path / "eval.json"
    assert eval_t2m.main(["--size", "320", "--threads", "1", "--tiny-evaluator", "--gen-s-per-sample", "0.5",
                          "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    # 10 batches of 32: 7 generated once, the first 3 thirty times each (MultiModality)
    assert data["generated_samples_per_replication"] == 7 * 32 + 3 * 30 * 32
    assert data["projected_20_rep_s"] == pytest.approx(20 * (data["driver_s_per_replication"] + 3104 * 0.5))


def test_eval_projection_uses_the_evaluation_batch_size(tmp_path):
    from utils.benchmarks.eval_t2m import gen_seconds_from_json

    def run(total, compiled=None):
        entry = {"fast_bf16": {"stages": {"total": {"median": total}}}}
        if compiled is not None:
            entry["fast_bf16_compile"] = {"stages": {"total": {"median": compiled}}}
        return entry

    path = tmp_path / "gen.json"
    data = {"date": "d", "machine": "m", "runs": {"1": run(0.5), "32": run(3.2, 1.6), "256": run(2.56)}}
    path.write_text(json.dumps(data))
    assert gen_seconds_from_json(str(path)) == (pytest.approx(0.05), "fast_bf16_compile at batch 32 (d, m)")
    del data["runs"]["32"]
    path.write_text(json.dumps(data))
    assert gen_seconds_from_json(str(path))[0] == pytest.approx(0.01)           # no batch 32: the largest
    data["runs"] = {"32": {"fast_fp32": {"stages": {"total": {"median": 6.4}}}}}   # bf16 skipped as emulated
    path.write_text(json.dumps(data))
    assert gen_seconds_from_json(str(path)) == (pytest.approx(0.2), "fast_fp32 at batch 32 (d, m)")
    data["runs"]["32"]["fast_bf16"] = {"stages": {"total": {"median": 32.0}}}    # forced bf16, emulated: slower
    path.write_text(json.dumps(data))
    assert gen_seconds_from_json(str(path))[1].startswith("fast_fp32")           # the fastest path, not the bf16 one


def test_training_benchmark_runs_on_a_tiny_budget(tmp_path, monkeypatch):
    from utils.benchmarks import train_generators as tg

    r = tg.bench_model("residual", torch.device("cpu"), batch=1, steps=1, bf16=False)
    assert r["samples_per_s"] > 0 and r["params"] > 1e6
    item = tg.synthetic_generator_dataset(entries=50)[3]
    assert item["tokens"].shape == (49, 7, 6) and item["r_t"].shape == (1, 512)


def test_the_scripts_offer_the_pipelines_precisions():
    import eval_t2m
    import generate
    from models.pipeline import PRECISIONS

    assert generate.PRECISIONS == eval_t2m.PRECISIONS == PRECISIONS


@pytest.mark.parametrize("flags, native", [
    ({"fpu", "avx", "avx2", "fma"}, False),                       # AMD Zen 2 / Intel Haswell-Skylake client
    ({"avx2", "avx512f", "avx512bw"}, False),                     # AVX-512 without its BF16 extension
    ({"avx2", "avx512f", "avx512_bf16"}, True),                   # AMD Zen 4-5, Intel Cooper Lake
    ({"avx512_bf16", "amx_bf16", "amx_tile"}, True),              # Intel Sapphire Rapids and later
    ({"fp", "asimd", "bf16"}, True),                              # Arm with the BF16 extension
])
def test_bf16_slow_reason_reads_the_cpu_flags(flags, native):
    from models.low_precision import bf16_slow_reason

    reason = bf16_slow_reason("cpu", flags=flags)
    assert (reason is None) == native
    if not native:
        assert "avx512_bf16" in reason and "slower than fp32" in reason


def test_bf16_slow_reason_on_cuda_goes_by_compute_capability(monkeypatch):
    from models.low_precision import bf16_slow_reason

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert bf16_slow_reason("cuda:1") == "Tesla V100 has no native bf16 (compute capability 7.0 < 8.0)"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert bf16_slow_reason("cuda") is None


def test_cpu_flags_parses_x86_and_arm_cpuinfo(tmp_path):
    from models.low_precision import cpu_flags, cpuinfo

    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2\n\nprocessor\t: 1\n"
                   "flags\t\t: fpu sse2 avx2 avx512_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_flags(str(x86)) == {"fpu", "sse2", "avx2"}                   # the first CPU's line
    assert cpu_flags(str(arm)) == {"fp", "asimd", "bf16", "i8mm"}
    assert cpu_flags(str(tmp_path / "missing")) is None
    assert cpuinfo(str(x86))["model name"] == "AMD EPYC"
    riscv = tmp_path / "riscv"
    riscv.write_text("processor\t: 0\nisa\t\t: rv64imafdc\n")
    assert cpu_flags(str(riscv)) is None                  # no flags line: not read as "no bf16" (oneDNN decides)


def test_pipeline_warns_when_bf16_is_emulated(components, monkeypatch):
    import warnings

    import models.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "bf16_slow_reason", lambda device: "no bf16 matrix instructions")
    for precision in ("bf16", "bf16-autocast"):
        with pytest.warns(UserWarning, match=f"precision '{precision}' on cpu: no bf16 matrix instructions; "
                                             "precision 'fp32' is the fast choice here"):
            bench.make_pipeline(components, precision=precision)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bench.make_pipeline(components)                                      # fp32: nothing to say
    monkeypatch.setattr(pipeline_module, "bf16_slow_reason", lambda device: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bench.make_pipeline(components, precision="bf16")                   # native bf16: silent
    monkeypatch.setattr(pipeline_module, "bf16_slow_reason", lambda device: "no bf16 matrix instructions")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bench.make_pipeline(components, precision="bf16", bf16_stages=())   # no stage in bf16: silent


def test_bf16_copy_follows_its_source_and_leaves_it_in_fp32(components):
    from models.low_precision import Bf16Copy

    mask = components["mask"]
    before = {k: v.clone() for k, v in mask.state_dict().items()}
    copy = Bf16Copy(mask)
    first = copy.get()
    assert copy.get() is first                                            # cached while the source is unchanged
    assert first is not mask and first.token_emb.weight.dtype == torch.bfloat16
    assert mask.token_emb.weight.dtype == torch.float32                   # the source keeps its fp32 weights
    assert first.column_vocab.dtype == mask.column_vocab.dtype            # integer buffers are not cast
    changed = {k: (v + 1 if v.is_floating_point() else v) for k, v in before.items()}
    mask.load_state_dict(changed)
    try:
        second = copy.get()
        assert second is not first
        torch.testing.assert_close(second.token_emb.weight.float(), changed["token_emb.weight"], atol=0.05, rtol=0.01)
    finally:
        mask.load_state_dict(before)


def test_bf16_pipeline_runs_bf16_copies_and_autocast_keeps_fp32_weights(components):
    weights = bench.make_pipeline(components, precision="bf16")
    auto = bench.make_pipeline(components, precision="bf16-autocast")
    assert weights.stage_module("mask").token_emb.weight.dtype == torch.bfloat16
    assert weights.stage_module("residual").token_embed.dtype == torch.bfloat16
    assert auto.stage_module("mask") is components["mask"]
    assert bench.make_pipeline(components, precision="bf16", bf16_stages=("text",)).stage_module("mask") \
        is components["mask"]
    a, b = _call(weights), _call(auto)
    assert a.tokens.shape == b.tokens.shape and a.features.dtype == torch.float32
    assert float((a.tokens == b.tokens)[a.tokens >= 0].float().mean()) > 0.8


def test_bf16_weights_keep_the_per_item_seeds(components):
    """precision "bf16": a batch gives each item the tokens it gets alone (the copies do not break per-item seeds)."""
    pipe = bench.make_pipeline(components, precision="bf16")
    both = pipe(PROMPTS[:2], lengths=[120, 120], steps=3, seed=3)
    alone = pipe(PROMPTS[1:2], lengths=[120], steps=3, seed=4)
    assert torch.equal(both.tokens[1:], alone.tokens)


def test_matmul_attention_equals_sdpa_with_masks_and_chunks():
    import torch.nn.functional as F

    from models.attention import matmul_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 2, n, 8, generator=g) for n in (6, 9, 9))
    keep = torch.ones(5, 9, dtype=torch.bool)
    keep[1, 6:] = False                                      # dropped condition keys
    keep[3, :2] = False                                      # padded keys
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
    for chunk_bytes in (1, 2 * 6 * 9 * 4 * 2, 1 << 30):       # one item per chunk, two, all at once
        torch.testing.assert_close(matmul_attention(q, k, v, keep, chunk_bytes), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(matmul_attention(q, k, v, None), F.scaled_dot_product_attention(q, k, v),
                               atol=1e-5, rtol=1e-5)
    # a masked key gets exactly zero weight: changing its value does not move the output
    v2 = v.clone()
    v2[1, :, 7] += 100.0
    torch.testing.assert_close(matmul_attention(q, k, v2, keep), matmul_attention(q, k, v, keep))
    low = matmul_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), keep).float()
    assert float((low - ref).norm() / ref.norm()) < 0.02


def test_attention_kernel_choice(components):
    from models.attention import use_attention_kernel
    from models.pipeline import PipelineError

    pipe = bench.make_pipeline(components, precision="bf16")
    kernels = {m.kernel for m in pipe.stage_module("mask").modules() if hasattr(m, "kernel")}
    assert kernels == {"matmul"}                             # "auto" on a CPU
    assert {m.kernel for m in components["mask"].modules() if hasattr(m, "kernel")} == {"sdpa"}   # source untouched
    sdpa = bench.make_pipeline(components, precision="bf16", attention_kernel="sdpa")
    assert {m.kernel for m in sdpa.stage_module("residual").modules() if hasattr(m, "kernel")} == {"sdpa"}
    a, b = _call(pipe), _call(sdpa)
    assert float((a.tokens == b.tokens)[a.tokens >= 0].float().mean()) > 0.8
    with pytest.raises(PipelineError, match="attention_kernel"):
        bench.make_pipeline(components, attention_kernel="flash")
    with pytest.raises(ValueError, match="kernel"):
        use_attention_kernel(components["mask"], "flash")


def test_pass_rows_keep_the_logits_and_the_tokens(components):
    from models.sampling import map_row_chunks

    mask, residual, t, r, tokens, g = _pass_inputs(components, b=5, tp=4, seed=1)
    b, tp, c = 5, 4, mask.cfg.num_columns
    with torch.no_grad():
        whole = mask.guided_logits(tokens, t, r, r)
        for rows in (1, 3, 10):
            torch.testing.assert_close(mask.guided_logits(tokens, t, r, r, pass_rows=rows), whole,
                                       atol=1e-5, rtol=1e-5)
        full = torch.randint(0, 16, (b, tp, c, residual.cfg.num_quantizers), generator=g)
        torch.testing.assert_close(residual.guided_logits(full, 2, t, pass_rows=3), residual.guided_logits(full, 2, t),
                                   atol=1e-5, rtol=1e-5)
    calls = []
    out = map_row_chunks(lambda x, y: calls.append(len(x)) or x + (0 if y is None else y),
                         [torch.arange(7), None], 3)
    assert calls == [3, 3, 1] and torch.equal(out, torch.arange(7))
    one = bench.make_pipeline(components, pass_rows=None)
    sliced = bench.make_pipeline(components, pass_rows=1)
    assert bench.make_pipeline(components).rows_per_pass() == 8          # "auto" on a CPU
    assert torch.equal(_call(one).tokens, _call(sliced).tokens)


def test_bad_pass_rows_is_a_one_line_error(components):
    from models.pipeline import PipelineError

    with pytest.raises(PipelineError, match="pass_rows"):
        bench.make_pipeline(components, pass_rows=0)


def _compiled(module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def test_compile_wraps_the_running_transformers_and_keeps_the_tokens(components):
    from models.pipeline import PipelineError

    eager = _call(bench.make_pipeline(components, pad_to=49))
    fresh = bench.tiny_components()                     # compile works in place: keep the shared ones eager
    pipe = bench.make_pipeline(fresh).compile(backend="eager")
    assert pipe.pad_to == 49 and pipe.compile_options == {"mode": None, "backend": "eager"}
    assert all(_compiled(b) for m in (pipe.mask, pipe.residual) for b in (*m.blocks, m.head))
    assert torch.equal(_call(pipe).tokens, eager.tokens)
    with pytest.raises(PipelineError, match="argument 'mode' must be None or one of"):
        pipe.compile("fastest")


def test_compile_in_bf16_compiles_the_copies_also_when_rebuilt(components):
    pipe = bench.make_pipeline(components, precision="bf16")
    first = pipe.stage_module("mask")                    # built before compile: compiled by it
    pipe.compile(backend="eager")
    assert _compiled(first.blocks[0]) and not _compiled(pipe.mask.blocks[0])    # the fp32 source stays eager
    pipe.mask.load_state_dict(pipe.mask.state_dict())    # the source changes: a new copy, compiled as it is built
    again = pipe.stage_module("mask")
    assert again is not first and all(_compiled(b) for b in (*again.blocks, again.head))
    assert _compiled(pipe.stage_module("residual").head)
    assert pipe(PROMPTS[:1], lengths=64, steps=2).tokens.shape[0] == 1


@pytest.mark.slow
def test_inductor_compile_on_the_cpu_keeps_the_logits(components):
    """Real code generation (a minute or more): fp32 logits of one guided pass within 1e-4 of eager."""
    fresh = bench.tiny_components()
    pipe = bench.make_pipeline(fresh).compile("default")
    mask, _, t, r, tokens, _ = _pass_inputs(components, b=2, tp=49, seed=3)
    with torch.no_grad():
        want = components["mask"].eval().guided_logits(tokens, t, r, r)
        got = pipe.stage_module("mask").guided_logits(tokens, t, r, r)
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], atol=1e-4, rtol=1e-4)
