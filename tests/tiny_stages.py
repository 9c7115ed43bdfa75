"""Tiny settings of the real stage classes and scripts, shared by the test files (CPU seconds, not learning).

    TINY_EVALUATOR_WIDTHS                       EvaluatorConfig widths of a tiny random T2M evaluator
    tiny_rvq_model_cfg(global_branch)           RVQConfig keyword arguments of a tiny tokenizer
    tiny_rvq_overrides(root, **extra)           train_rvq.py overrides: tiny model, 4 steps on the mini dataset
    tiny_retriever_overrides(root, **extra)     train_retriever.py overrides: tiny retriever, 2 steps
    tiny_text_overrides(prefix)                 a tiny random text encoder as the generator's text condition
    train_tiny_upstream(root, runs_root)        a tiny tokenizer + retriever (with database) for the generator stages
`extra` maps dotted keys to values and is applied last (e.g. `**{"train.max_steps": 1}`).
"""
from __future__ import annotations

TINY_EVALUATOR_WIDTHS = dict(dim_word=12, dim_pos_ohot=15, dim_text_hidden=8, dim_motion_hidden=10,
                             dim_coemb_hidden=6, dim_movement_enc_hidden=9, dim_movement_latent=7)


def _yaml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def tiny_rvq_model_cfg(global_branch: bool = False) -> dict:
    return dict(width=32, code_dim=16, nb_code=16, global_branch=global_branch, global_width=32, global_code_dim=16,
                global_nb_code=16, dropout=0.0)


def tiny_rvq_overrides(root, **extra) -> list[str]:
    over = [f"data.root={root}", "train.device=cpu", "train.batch_size=4", "train.max_steps=4", "train.val_every=2",
            "train.ckpt_every=2", "train.warmup_steps=0", "val.max_batches=2"]
    over += [f"model.{k}={_yaml(v)}" for k, v in tiny_rvq_model_cfg().items()]
    return over + [f"{k}={_yaml(v)}" for k, v in extra.items()]


def tiny_retriever_overrides(root, **extra) -> list[str]:
    over = [f"data.root={root}", "model.part_width=8", "model.layers=1", "model.heads=2", "model.ff_dim=16",
            "model.latent_dim=16", "model.text_tiny=true", "model.queue_size=16", "model.frame_pool=1",
            "train.batch_size=8", "train.max_steps=2", "train.val_every=2", "train.ckpt_every=2",
            "retriever.database_batch_size=16"]
    return over + [f"{k}={_yaml(v)}" for k, v in extra.items()]


def tiny_text_overrides(prefix: str = "upstream.text.") -> list[str]:
    """A tiny random MiniLM-class text encoder (32-d) as the generator's text condition (offline, fast)."""
    return [f"{prefix}name=minilm", f"{prefix}tiny=true", f"{prefix}out_dim=0", f"{prefix}path="]


def train_tiny_upstream(root, runs_root) -> dict:
    """Train a tiny tokenizer (global column, 2 steps) and a tiny retriever (2 steps, database built) on the
    dataset at `root`; returns {"tokenizer": best.pt path, "retriever": best.pt path} (strings)."""
    import train_retriever
    import train_rvq

    train_rvq.main(["--config", "configs/mini/rvq.yaml", "--runs-root", str(runs_root), "--name", "tiny",
                    *tiny_rvq_overrides(root, **{"model.global_branch": True, "train.max_steps": 2,
                                                 "val.render": False})])
    assert train_retriever.main(["--config", "configs/mini/retriever.yaml", "--runs-root", str(runs_root),
                                 "--name", "tiny", *tiny_retriever_overrides(root, **{"retriever.final_eval": False})]) == 0
    return {"tokenizer": str(runs_root / "rvq" / "tiny" / "checkpoints" / "best.pt"),
            "retriever": str(runs_root / "retriever" / "tiny" / "checkpoints" / "best.pt")}


def tiny_mask_overrides(root, upstream: dict, cache_dir, **extra) -> list[str]:
    """train_mask_transformer.py overrides: a tiny MaskTransformer, 3 steps, on `upstream` (train_tiny_upstream)."""
    over = [f"data.root={root}", "train.device=cpu", "model.layers=1", "model.heads=2", "model.width=16",
            "model.ff_dim=32", "model.dropout=0.0", "model.steps=2", "train.batch_size=4", "train.max_steps=3",
            "train.val_every=2", "train.ckpt_every=2", "train.warmup_steps=0", "train.log_every=1",
            "val.max_batches=2", "val.evaluator=", f"upstream.tokenizer={upstream['tokenizer']}",
            f"upstream.retriever={upstream['retriever']}", f"upstream.cache_dir={cache_dir}",
            "upstream.encode_batch_size=16", *tiny_text_overrides()]
    return over + [f"{k}={_yaml(v)}" for k, v in extra.items()]
