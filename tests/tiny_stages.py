"""Tiny settings of the real stage classes and scripts, shared by the test files (CPU seconds, not learning).

    TINY_EVALUATOR_WIDTHS                       EvaluatorConfig widths of a tiny random T2M evaluator
    tiny_rvq_model_cfg(global_branch)           RVQConfig keyword arguments of a tiny tokenizer
    tiny_rvq_overrides(root, **extra)           train_rvq.py overrides: tiny model, 4 steps on the mini dataset
    tiny_retriever_overrides(root, **extra)     train_retriever.py overrides: tiny retriever, 2 steps
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
