"""The evaluation driver on a tiny random evaluator and a fake eval set (reference.md §4 protocol)."""
import json

import numpy as np
import pytest
import torch

from models.evaluator import EvaluatorConfig, T2MEvaluator
from tests.tiny_stages import TINY_EVALUATOR_WIDTHS as SMALL
from tests.tiny_stages import tiny_retriever_overrides, tiny_rvq_overrides
from utils import evaluation as E

D = 263

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models, one thread


class FakeEvalSet(torch.utils.data.Dataset):
    """Items shaped like datasets.motion_dataset "eval" items; text features are a function of the motion so the
    evaluator can (weakly) match them. Normalised with mean 1 / std 2."""

    def __init__(self, n=96, t=48, seed=0):
        g = np.random.default_rng(seed)
        self.raw = g.normal(size=(n, t, D)).astype(np.float32)
        self.lengths = g.integers(3, t // 4 + 1, size=n) * 4
        for i, m in enumerate(self.lengths):
            self.raw[i, m:] = 1.0                      # = mean: zero after normalisation
        self.word = g.normal(size=(n, 22, 12)).astype(np.float32)
        self.sent = g.integers(3, 23, size=n)
        self.mean, self.std = np.ones(D, np.float32), np.full(D, 2.0, np.float32)

    def __len__(self):
        return len(self.raw)

    def __getitem__(self, i):
        return {"motion": torch.from_numpy((self.raw[i] - self.mean) / self.std), "length": int(self.lengths[i]),
                "word_embs": torch.from_numpy(self.word[i]), "pos_ohot": torch.eye(15)[torch.arange(22) % 15],
                "sent_len": int(self.sent[i]), "caption": f"c{i}", "id": str(i)}

    def denormalize(self, x):
        return x * torch.from_numpy(self.std) + torch.from_numpy(self.mean)


def collate(items):
    out = {}
    for k in items[0]:
        v = [it[k] for it in items]
        out[k] = torch.stack(v) if torch.is_tensor(v[0]) else (torch.tensor(v) if isinstance(v[0], int) else v)
    return out


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = EvaluatorConfig(dim_pose=D, **SMALL)
    evaluator = T2MEvaluator(cfg, np.ones(D), np.full(D, 2.0))   # evaluator stats = dataset stats here
    return FakeEvalSet(), evaluator


def small_cfg(**kw):
    base = dict(replications=3, diversity_times=50, mm_batches=1, mm_repeats=10, mm_times=5)
    return E.EvalConfig(**{**base, **kw})


def gt_generation(data):
    return lambda batch: (data.denormalize(batch["motion"]), batch["length"])


@pytest.fixture(scope="module")
def gt_report(setup):
    data, ev = setup
    return E.evaluate_t2m(gt_generation(data), data, ev, small_cfg(), collate_fn=collate, progress=False)


def test_ground_truth_as_generation_scores_like_ground_truth(gt_report):
    rep = gt_report
    gt, gen = rep["metrics"]["gt"], rep["metrics"]["generated"]
    assert gen["FID"]["mean"] == pytest.approx(0.0, abs=1e-4)
    for k in ("R_precision_top1", "R_precision_top2", "R_precision_top3", "MM_Dist", "Diversity"):
        assert gen[k]["values"] == pytest.approx(gt[k]["values"])
    assert gen["MultiModality"]["mean"] == 0.0                      # identical repeats
    assert "FID" not in gt
    assert rep["samples_per_replication"] == 96 and rep["seeds"] == [10107, 10108, 10109]
    # R-precision is monotone in k and a rate
    assert 0 <= gt["R_precision_top1"]["mean"] <= gt["R_precision_top3"]["mean"] <= 1


def test_conf_is_the_reference_formula(gt_report):
    entry = gt_report["metrics"]["gt"]["R_precision_top1"]
    v = np.array(entry["values"])
    assert entry["mean"] == pytest.approx(v.mean())
    assert entry["conf"] == pytest.approx(1.96 * v.std() / np.sqrt(3))
    assert len(set(v)) > 1                           # replications shuffle the batches differently


def test_replications_are_reproducible(setup):
    data, ev = setup
    a = E.evaluate_t2m(gt_generation(data), data, ev, small_cfg(replications=2, mm_mode="off"), collate_fn=collate, progress=False)
    b = E.evaluate_t2m(gt_generation(data), data, ev, small_cfg(replications=2, mm_mode="off"), collate_fn=collate, progress=False)
    assert a["metrics"] == b["metrics"]


def test_noisy_generation_has_positive_fid_and_multimodality(setup):
    data, ev = setup
    calls = {"mm": 0}

    def noisy(batch, multimodality=False):
        calls["mm"] += multimodality
        m = data.denormalize(batch["motion"])
        return m + 3.0 * torch.randn_like(m), batch["length"]

    rep = E.evaluate_t2m(noisy, data, ev, small_cfg(replications=1), collate_fn=collate, progress=False)
    gen = rep["metrics"]["generated"]
    assert gen["FID"]["mean"] > 0.1 and gen["MultiModality"]["mean"] > 0
    assert calls["mm"] == 10                          # 1 MM batch × 10 repeats, flagged multimodality=True


def test_t2m_multimodality_variant(setup):
    data, ev = setup
    rep = E.evaluate_t2m(gt_generation(data), data, ev,
                         small_cfg(replications=1, mm_mode="t2m", mm_num_texts=40), collate_fn=collate,
                         progress=False)
    assert rep["metrics"]["generated"]["MultiModality"]["mean"] == 0.0


def test_too_few_samples_for_r_precision_batch(setup):
    data, ev = setup
    small = torch.utils.data.Subset(data, range(20))
    with pytest.raises(E.EvaluationError, match="20 samples, fewer than one R-precision batch of 32"):
        E.evaluate_t2m(gt_generation(data), small, ev, small_cfg(), collate_fn=collate, progress=False)


def test_too_few_samples_for_diversity(setup):
    data, ev = setup
    with pytest.raises(E.EvaluationError, match="diversity_times=300.*only 96 samples"):
        E.evaluate_t2m(gt_generation(data), data, ev, small_cfg(diversity_times=300), collate_fn=collate,
                       progress=False)


def test_fast_mode_is_labelled_not_comparable(setup, tmp_path):
    data, ev = setup
    rep = E.evaluate_t2m(gt_generation(data), data, ev, small_cfg(replications=20, fast=True), collate_fn=collate,
                         progress=False)
    assert rep["config"]["replications"] == 1 and not rep["comparable_protocol"]
    js, md = E.write_report(rep, tmp_path / "run", checkpoints={"rvq": "runs/rvq/x/best.pt"}, stage="gt")
    saved = json.loads(js.read_text())
    assert saved["checkpoints"] == {"rvq": "runs/rvq/x/best.pt"} and saved["seeds"] == [10107]
    assert len(saved["commit"]) >= 7
    text = md.read_text()
    assert "NOT COMPARABLE" in text and "--fast" in text
    assert "| R_precision_top3 |" in text and " ± " in text and "runs/rvq/x/best.pt" in text


def test_reference_protocol_flag():
    assert E.EvalConfig().is_reference_protocol()
    assert not E.EvalConfig(replications=5).is_reference_protocol()
    assert not E.EvalConfig(fast=True).is_reference_protocol()
    assert E.EvalConfig(mm_mode="off").is_reference_protocol()       # GT / reconstructions have no MM


BAD_SETTINGS = [
    (dict(replications=0), r"eval\.replications \(--replications\) must be an integer >= 1 .*got 0$"),
    (dict(diversity_times=0), r"eval\.diversity_times must be an integer >= 1 \(pairs drawn for Diversity.*got 0$"),
    (dict(mm_batches=0), r"eval\.mm_batches must be an integer >= 1 in mm_mode 'momask'.*eval\.mm_mode=off.*got 0$"),
    (dict(mm_mode="t2m", mm_num_texts=0), r"eval\.mm_num_texts must be an integer >= 1 in mm_mode 't2m'.*got 0$"),
    (dict(mm_times=0), r"eval\.mm_times must be an integer >= 1 .*got 0$"),
    (dict(mm_repeats=5, mm_times=10), r"eval\.mm_repeats must be >= eval\.mm_times=10 .*got 5$"),
    (dict(batch_size=2), r"eval\.batch_size must be >= eval\.top_k=3: R-precision ranks .*got 2$"),
    (dict(top_k=0), r"eval\.top_k must be an integer >= 1 .*got 0$"),
    (dict(mm_mode="sometimes"), r"eval\.mm_mode must be 'momask', 't2m' or 'off', got 'sometimes'$"),
]


@pytest.mark.parametrize("kw, message", BAD_SETTINGS)
def test_out_of_range_settings_fail_before_any_generation(setup, kw, message):
    data, ev = setup
    calls = []

    def generate(batch):
        calls.append(1)
        return data.denormalize(batch["motion"]), batch["length"]

    with pytest.raises(E.EvalConfigError, match=message):
        E.evaluate_t2m(generate, data, ev, E.EvalConfig(**kw), collate_fn=collate, progress=False)
    assert calls == []                                   # refused up front, not partway through


def test_multimodality_settings_are_not_checked_when_it_is_off():
    cfg = E.EvalConfig(mm_mode="off", mm_batches=0, mm_times=0, mm_repeats=0, mm_num_texts=0)
    assert cfg.validate() is cfg
    assert E.EvalConfig().validate().replications == 20


def test_fast_mode_still_validates_the_requested_settings():
    with pytest.raises(E.EvalConfigError, match="eval.diversity_times"):
        E.EvalConfig(fast=True, diversity_times=0).validate()


def test_report_without_evaluator_metrics_renders_the_reason(tmp_path):
    rep = E.evaluator_skipped_report(E.EvalConfig(), "FID skipped because /x/finest.tar does not exist", label="rvq")
    js, md = E.write_report(rep, tmp_path, stage="rvq", extra_metrics={"mpjpe_mm": 12.5})
    text = md.read_text()
    assert "**Skipped: FID skipped because /x/finest.tar does not exist**" in text
    assert "- mpjpe_mm: 12.5" in text and "| metric |" not in text and "replications" not in text.split("##")[0]
    assert json.loads(js.read_text())["skipped"] == "FID skipped because /x/finest.tar does not exist"
    assert E.summary_line(rep) == "no evaluator metrics: FID skipped because /x/finest.tar does not exist"


# ------------------------------------------------------------------------------------------------ eval_t2m.py

def _official_tiny_evaluator(root):
    from tests.test_evaluator import save_official

    path, _, _ = save_official(root, dim_word=300, dim_pos_ohot=15, dim_text_hidden=8, dim_motion_hidden=8,
                               dim_coemb_hidden=8, dim_movement_enc_hidden=8, dim_movement_latent=8)
    return path


def test_eval_t2m_gt_stage_writes_report(mini_root, tmp_path):
    import eval_t2m

    path = _official_tiny_evaluator(tmp_path)
    rc = eval_t2m.main(["--stage", "gt", "--runs-root", str(tmp_path / "runs"), "--name", "t",
                        f"data.root={mini_root}", f"evaluator.path={path}", "eval.batch_size=4",
                        "eval.diversity_times=4", "eval.replications=2", "device=cpu"])
    assert rc == 0
    rep = json.loads((tmp_path / "runs/eval/t/gt/eval.json").read_text())
    gen = rep["metrics"]["ground truth (as generation)"]
    assert gen["FID"]["mean"] == pytest.approx(0.0, abs=1e-3)
    assert gen["R_precision_top3"]["values"] == pytest.approx(rep["metrics"]["gt"]["R_precision_top3"]["values"])
    assert rep["evaluator"] == str(path) and rep["config"]["mm_mode"] == "off"
    md = (tmp_path / "runs/eval/t/gt/eval.md").read_text()
    assert "mini dataset" in md and "NOT COMPARABLE" in md            # 2 replications, batch 4


def test_eval_t2m_generator_stage_names_the_missing_checkpoint(tmp_path):
    import eval_t2m

    with pytest.raises(SystemExit, match=r"--stage t2m: checkpoint .*mask/x/checkpoints/last\.pt not found; train it "
                                         r"first \(python train_mask_transformer\.py\)"):
        eval_t2m.main(["--stage", "t2m", "--runs-root", str(tmp_path), "--name", "x"])


@pytest.mark.parametrize("flags, message", [
    (["--replications", "0"], "eval.replications (--replications) must be an integer >= 1"),
    (["--replications", "-3"], "eval.replications (--replications) must be an integer >= 1"),
    (["eval.diversity_times=0"], "eval.diversity_times must be an integer >= 1"),
    (["eval.mm_batches=0"], "eval.mm_batches must be an integer >= 1 in mm_mode 'momask'"),
    (["eval.batch_size=2"], "eval.batch_size must be >= eval.top_k=3"),
])
@pytest.mark.parametrize("stage", ["gt", "rvq"])
def test_eval_t2m_bad_settings_are_a_one_line_error(tmp_path, capsys, stage, flags, message):
    import eval_t2m

    # nothing exists under tmp_path: the settings are checked before any checkpoint, evaluator or data is looked at
    with pytest.raises(SystemExit) as ex:       # the config loader refuses them (utils.config, EvalConfig.check_values)
        eval_t2m.main(["--stage", stage, "--runs-root", str(tmp_path), f"data.root={tmp_path}/no_data",
                       f"evaluator.path={tmp_path}/none.tar", f"checkpoints.rvq={tmp_path}/none.pt",
                       "device=cpu", *flags])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err and "utils/evaluation.py" not in err
    assert "Traceback" not in err
    assert not (tmp_path / "eval").exists()


def test_eval_t2m_missing_evaluator_says_what_is_expected(mini_root, tmp_path, capsys):
    import eval_t2m

    rc = eval_t2m.main(["--stage", "gt", "--runs-root", str(tmp_path), f"data.root={mini_root}",
                        f"evaluator.path={tmp_path}/nope/finest.tar", "device=cpu"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "not found" in err and "text_mot_match/model/finest.tar" in err


def test_eval_t2m_other_dataset_evaluator_is_refused(mini_root, tmp_path, capsys):
    import eval_t2m
    from tests.test_evaluator import save_official

    path, _, _ = save_official(tmp_path, dataset="kit")
    rc = eval_t2m.main(["--stage", "gt", "--runs-root", str(tmp_path), f"data.root={mini_root}",
                        f"evaluator.path={path}", "device=cpu"])
    assert rc == 1 and "251-d" in capsys.readouterr().err


def test_eval_t2m_glove_folder_missing_a_file(mini_root, tmp_path, capsys):
    import shutil

    import eval_t2m

    glove = tmp_path / "glove"
    shutil.copytree(mini_root / "glove", glove)
    (glove / "our_vab_idx.pkl").unlink()
    path = _official_tiny_evaluator(tmp_path)
    rc = eval_t2m.main(["--stage", "gt", "--runs-root", str(tmp_path), f"data.root={mini_root}",
                        f"data.glove_dir={glove}", f"evaluator.path={path}", "device=cpu"])
    assert rc == 1 and "missing our_vab_idx.pkl" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_rvq_ckpt(mini_root, tmp_path_factory):
    """A 2-step tiny RVQ checkpoint trained once for the eval_t2m rvq tests."""
    import train_rvq

    root = tmp_path_factory.mktemp("rvq_runs")
    train_rvq.main(["--config", "configs/mini/rvq.yaml", "--runs-root", str(root), "--name", "r",
                    *tiny_rvq_overrides(mini_root, **{"train.max_steps": 2, "val.render": "false"})])
    ckpt = root / "rvq/r/checkpoints/best.pt"
    assert ckpt.is_file()
    return ckpt


def test_eval_t2m_rvq_stage_scores_reconstructions(mini_root, tmp_path, tiny_rvq_ckpt):
    import eval_t2m

    ckpt = tiny_rvq_ckpt
    path = _official_tiny_evaluator(tmp_path)
    rc = eval_t2m.main(["--stage", "rvq", "--runs-root", str(tmp_path / "runs"), "--name", "t",
                        f"data.root={mini_root}", f"evaluator.path={path}", f"checkpoints.rvq={ckpt}",
                        "eval.batch_size=4", "eval.diversity_times=4", "eval.replications=2", "device=cpu"])
    assert rc == 0
    rep = json.loads((tmp_path / "runs/eval/t/rvq/eval.json").read_text())
    gen = rep["metrics"]["rvq reconstruction"]
    assert gen["FID"]["mean"] > 0 and rep["checkpoints"] == {"rvq": str(ckpt)}
    assert "mpjpe_mm" in rep["extra_metrics"]
    assert "mpjpe_mm" in (tmp_path / "runs/eval/t/rvq/eval.md").read_text()


def test_eval_t2m_rvq_stage_without_evaluator_reports_mpjpe_only(mini_root, tmp_path, tiny_rvq_ckpt, capsys):
    import eval_t2m

    missing = tmp_path / "nope/text_mot_match/model/finest.tar"
    rc = eval_t2m.main(["--stage", "rvq", "--runs-root", str(tmp_path / "runs"), "--name", "t",
                        f"data.root={mini_root}", f"evaluator.path={missing}", f"checkpoints.rvq={tiny_rvq_ckpt}",
                        "eval.batch_size=4", "eval.diversity_times=4", "eval.replications=2", "device=cpu"])
    assert rc == 0
    out = capsys.readouterr()
    assert f"skipped because the evaluator checkpoint {missing} does not exist" in out.err
    rep = json.loads((tmp_path / "runs/eval/t/rvq/eval.json").read_text())
    extra = rep["extra_metrics"]
    assert extra["mpjpe_mm"] > 0 and np.isfinite(extra["mpjpe_mm"]) and "feature_l1" in extra
    assert "fid" not in extra and rep["metrics"] == {}                 # no FID / R-precision of any kind
    assert rep["skipped"].startswith("FID, R-precision, MM-Dist and Diversity skipped")
    assert str(missing) in rep["skipped"] and rep["checkpoints"] == {"rvq": str(tiny_rvq_ckpt)}
    assert not rep["comparable_protocol"]
    md = (tmp_path / "runs/eval/t/rvq/eval.md").read_text()
    assert f"**Skipped: FID, R-precision, MM-Dist and Diversity skipped because the evaluator checkpoint {missing} " \
           f"does not exist" in md
    assert "- mpjpe_mm: " in md and "| FID |" not in md and "R_precision" not in md
    assert "- evaluator: `none`" in md
    assert "mpjpe_mm" in out.out                                        # main prints eval.md


def test_eval_t2m_rvq_stage_corrupt_evaluator_is_an_error(mini_root, tmp_path, tiny_rvq_ckpt, capsys):
    import eval_t2m

    bad = tmp_path / "finest.tar"
    bad.write_bytes(b"PK\x03\x04truncated")
    rc = eval_t2m.main(["--stage", "rvq", "--runs-root", str(tmp_path / "runs"), "--name", "t",
                        f"data.root={mini_root}", f"evaluator.path={bad}", f"checkpoints.rvq={tiny_rvq_ckpt}",
                        "device=cpu"])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"could not read evaluator checkpoint {bad}" in err and "truncated" in err
    assert not (tmp_path / "runs/eval/t/rvq/eval.json").exists()


def test_eval_t2m_retriever_stage_writes_protocol_table(mini_root, tmp_path):
    import eval_t2m
    import train_retriever

    tiny = tiny_retriever_overrides(mini_root, **{"train.max_steps": 1, "train.val_every": 1, "train.ckpt_every": 1})
    assert train_retriever.main(["--config", "configs/mini/retriever.yaml", "--runs-root", str(tmp_path),
                                 "--name", "s", *tiny]) == 0
    ckpt = tmp_path / "retriever/s/checkpoints/best.pt"
    rc = eval_t2m.main(["--stage", "retriever", "--runs-root", str(tmp_path / "runs"), "--name", "t",
                        f"data.root={mini_root}", f"checkpoints.retriever={ckpt}", "retrieval_protocols=[normal]",
                        "device=cpu"])
    assert rc == 0
    rep = json.loads((tmp_path / "runs/eval/t/retriever/eval.json").read_text())
    assert set(rep["results"]) == {"normal"} and 0 <= rep["results"]["normal"]["t2m/R01"] <= 100
    assert "t2m/R01" in (tmp_path / "runs/eval/t/retriever/eval.md").read_text()


# ---- ground-truth embeddings computed once (GTEmbeddingCache) --------------------------------------------------------

class FingerprintedEvalSet(FakeEvalSet):
    def fingerprint(self):
        return "fake-eval-set-0"


def _noisy_seeded(data):
    def generate(batch, generator=None):
        m = data.denormalize(batch["motion"])
        return m + torch.randn(m.shape, generator=generator), batch["length"]
    return generate


def _count_motion_encodings(ev, monkeypatch):
    calls = {"n": 0}
    inner = ev.encode_motion

    def counting(*a, **k):
        calls["n"] += 1
        return inner(*a, **k)
    monkeypatch.setattr(ev, "encode_motion", counting)
    return calls


def test_gt_cache_reuses_the_ground_truth_and_changes_no_number(setup, monkeypatch):
    data, ev = setup
    cfg = small_cfg(replications=2, mm_mode="off")
    plain = E.evaluate_t2m(_noisy_seeded(data), data, ev, cfg, collate_fn=collate, progress=False)
    cache = E.GTEmbeddingCache()
    first = E.evaluate_t2m(_noisy_seeded(data), data, ev, cfg, collate_fn=collate, progress=False, gt_cache=cache)
    assert cache.misses == 6 and cache.hits == 0 and len(cache.entries) == 6        # 2 replications x 3 batches
    calls = _count_motion_encodings(ev, monkeypatch)
    # another model under the same protocol: only its own motions are embedded
    second = E.evaluate_t2m(gt_generation(data), data, ev, cfg, collate_fn=collate, progress=False, gt_cache=cache)
    assert cache.hits == 6 and calls["n"] == 6
    assert first["metrics"] == plain["metrics"]                                     # bit-equal, not approx
    assert second["metrics"]["gt"] == plain["metrics"]["gt"]
    assert second["metrics"]["generated"]["FID"]["mean"] == pytest.approx(0.0, abs=1e-4)


def test_gt_cache_file_is_shared_by_protocol_and_keyed_by_evaluator(setup, tmp_path, caplog):
    data, ev = setup
    data = FingerprintedEvalSet()
    cfg = small_cfg(replications=1, mm_mode="off")
    a = E.GTEmbeddingCache.for_eval(tmp_path, data, ev, cfg, name="test")
    ref = E.evaluate_t2m(_noisy_seeded(data), data, ev, cfg, collate_fn=collate, progress=False, gt_cache=a)
    files = list(tmp_path.glob("eval_gt.test.*.pt"))
    assert len(files) == 1 and a.path == files[0]
    b = E.GTEmbeddingCache.for_eval(tmp_path, data, ev, cfg, name="test")           # a later process
    assert len(b.entries) == 3
    again = E.evaluate_t2m(_noisy_seeded(data), data, ev, cfg, collate_fn=collate, progress=False, gt_cache=b)
    assert b.hits == 3 and b.misses == 0 and again["metrics"] == ref["metrics"]
    other = T2MEvaluator(EvaluatorConfig(dim_pose=D, **SMALL), np.ones(D), np.full(D, 2.0))   # other weights
    c = E.GTEmbeddingCache.for_eval(tmp_path, data, other, cfg, name="test")
    assert c.path != a.path and not c.entries
    files[0].write_bytes(b"not a torch file")                                        # broken: recomputed
    d = E.GTEmbeddingCache.for_eval(tmp_path, data, ev, cfg, name="test")
    assert not d.entries and "unreadable ground-truth embedding cache" in caplog.text
    assert E.GTEmbeddingCache.for_eval(tmp_path, FakeEvalSet(), ev, cfg).path is None    # no fingerprint: memory
