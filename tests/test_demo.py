"""utils.demo's step runner: stages run in this process through their scripts' `main`, failures name the step."""
import pytest

from utils.demo import Step, demo_steps, run_step


def test_a_failing_step_names_itself_and_its_exit_code(capsys):
    bad_value = Step("evaluation: bad", "eval_t2m.py",
                     ("--stage", "gt", "--replications", "0", "--config", "configs/mini/eval.yaml"), "")
    with pytest.raises(SystemExit, match=r"^demo: step 'evaluation: bad' failed with exit code 2; its command"):
        run_step(bad_value)
    assert "eval.replications" in capsys.readouterr().err            # the script's own one-line error
    unknown_flag = Step("generation: bad", "generate.py", ("--no-such-flag",), "")
    with pytest.raises(SystemExit, match=r"failed with exit code 2"):  # argparse's exit, caught in-process
        run_step(unknown_flag)


def test_the_chain_is_in_pipeline_order_and_the_evaluations_share_one_evaluator():
    steps = demo_steps("data/mini", "demo", "runs")
    scripts = [s.script for s in steps]
    assert scripts[:6] == ["train_evaluator.py", "train_rvq.py", "train_retriever.py", "train_mask_transformer.py",
                           "train_residual.py", "train_residual.py"]
    assert scripts[6:] == ["eval_t2m.py"] * 4 + ["generate.py"]
    evaluators = {a for s in steps for a in s.args if a.startswith("evaluator.path=")}
    assert evaluators == {"evaluator.path=runs/evaluator/demo/text_mot_match/model/finest.tar"}


def test_ablations_score_every_row_with_the_same_protocol_and_evaluator():
    from utils.ablations import ablation_steps

    steps, reports = ablation_steps("data/mini", "demo", "runs", replications=3, mm_batches=1, mm_repeats=10)
    evals = [s for s in steps if s.script == "eval_t2m.py"]
    assert list(reports) == ["gt", "rvq", "full", "no_retrieval", "concat", "no_rag_cfg", "whole_body_retrieval"]
    assert len(evals) == 7
    for s in evals:      # same seeds (the config's), replications, MultiModality settings and evaluator for every row
        args = list(s.args)
        assert args[args.index("--replications") + 1] == "3"
        assert {"eval.mm_batches=1", "eval.mm_repeats=10", "eval.mm_times=10",
                "evaluator.path=runs/evaluator/demo/text_mot_match/model/finest.tar"} <= set(args)
    trained = [s for s in steps if s.script == "train_mask_transformer.py"]
    assert [a for s in trained for a in s.args if a.startswith("model.ablation=")] == [
        "model.ablation=no_retrieval", "model.ablation=concat", "model.ablation=no_rag_cfg",
        "model.ablation=whole_body_retrieval"]
    assert "upstream.retriever=runs/retriever/demo_whole_body/checkpoints/best.pt" in trained[-1].args
