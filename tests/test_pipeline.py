"""ReMoMaskPipeline on tiny random-weight components built with the real classes (diffusers-style fast tests)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tiny_stages import tiny_rvq_model_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_pipeline(retrieval: bool = True, estimator: bool = True, ablation: str = "none"):
    from models import mask_transformer as mt
    from models import residual_transformer as rt
    from models.length_estimator import LengthEstimator, LengthEstimatorConfig
    from models.pipeline import ReMoMaskPipeline, Retrieval
    from models.retrieval_database import DatabaseMeta, RetrievalDatabase, RetrievalQueryEncoder
    from models.retriever import RetrieverConfig
    from models.rvq import RVQConfig, RVQVAE2D
    from models.text_encoders import TextEncoderConfig, build_text_encoder_from_config
    from models.tokenizer import MotionTokenizer

    torch.manual_seed(0)
    rvq = RVQVAE2D(RVQConfig(**tiny_rvq_model_cfg(global_branch=True), num_quantizers=3))
    tok = MotionTokenizer(model=rvq, mean=torch.zeros(263), std=torch.ones(263), config={}, path="tiny_rvq.pt")
    text = build_text_encoder_from_config(TextEncoderConfig(name="minilm", tiny=True))
    rdim = 16
    retr = None
    if retrieval:
        enc = RetrievalQueryEncoder(RetrieverConfig(text_encoder="minilm", text_tiny=True, latent_dim=rdim,
                                                    part_width=8, layers=1, heads=2, ff_dim=16, queue_size=16))
        g = torch.Generator().manual_seed(3)
        n = 10
        meta = DatabaseMeta(dataset="t2m", feature_dim=263, latent_dim=rdim, split="train", data_root="-",
                            retriever_checkpoint="-", retriever_fingerprint="-")
        db = RetrievalDatabase(torch.randn(n, rdim, generator=g), torch.randn(n, rdim, generator=g),
                               [f"{i:06d}" for i in range(n)], [f"caption {i}" for i in range(n)], [80] * n, meta)
        retr = Retrieval(enc.eval(), db)
    common = dict(text_dim=text.out_dim, layers=1, heads=2, width=32, ff_dim=64, dropout=0.0, max_tokens=49)
    mask = mt.MaskTransformer(mt.MaskTransformerConfig(**mt.token_map_config(rvq), retrieval_dim=rdim,
                                                       ablation=ablation, **common))
    residual = rt.ResidualTransformer(rt.ResidualTransformerConfig(**rt.token_map_config(rvq), embed_dim=8,
                                                                   **common))
    est = LengthEstimator(LengthEstimatorConfig(text_dim=text.out_dim, hidden=[16])) if estimator else None
    return ReMoMaskPipeline(tok, text, mask, residual, retrieval=retr, length_estimator=est)


PROMPTS = ["a person walks forward", "someone jumps up and down", "a man waves his left hand"]


def test_shapes_lengths_and_neighbours():
    pipe = tiny_pipeline()
    out = pipe(PROMPTS, lengths=[40, 81, 196], num_samples=2, seed=0, steps=2)
    assert out.prompts == [p for p in PROMPTS for _ in range(2)] and out.seeds == list(range(6))
    assert out.lengths.tolist() == [40, 40, 80, 80, 196, 196]                  # 81 floored to a multiple of 4
    assert out.features.shape == (6, 196, 263) and out.joints.shape == (6, 196, 22, 3)
    assert out.tokens.shape == (6, 49, 7, 3)
    for i, n in enumerate(out.lengths.tolist()):
        steps = n // 4
        assert (out.tokens[i, :steps] >= 0).all() and (out.tokens[i, steps:] == -1).all()
        assert (out.features[i, n:] == 0).all() and np.isfinite(out.joints[i, :n]).all()
        assert out.motion(i).shape == (n, 22, 3)
    assert len(out.neighbours) == 6 and len(out.neighbours[0]) == 1
    nb = out.neighbours[0][0]
    assert nb.id.isdigit() and nb.caption.startswith("caption") and -1.0 <= nb.score <= 1.0
    assert out.neighbours[0] == out.neighbours[1]                               # samples of one prompt share it


def test_deterministic_for_a_seed_and_batch_equals_one_by_one():
    pipe = tiny_pipeline()
    batch = pipe(PROMPTS, lengths=[48, 100, 64], seed=5, steps=3)
    again = pipe(PROMPTS, lengths=[48, 100, 64], seed=5, steps=3)
    assert torch.equal(batch.tokens, again.tokens)
    other = pipe(PROMPTS, lengths=[48, 100, 64], seed=6, steps=3)
    assert not torch.equal(batch.tokens, other.tokens)
    for i, (p, n) in enumerate(zip(PROMPTS, [48, 100, 64])):
        single = pipe(p, lengths=[n], seed=5 + i, steps=3)
        steps = n // 4
        assert torch.equal(single.tokens[0, :steps], batch.tokens[i, :steps]), p
        torch.testing.assert_close(single.features[0, :n], batch.features[i, :n], atol=1e-4, rtol=1e-4)


def test_length_estimator_fills_missing_lengths_within_range():
    pipe = tiny_pipeline()
    out = pipe(PROMPTS, seed=1, steps=1)
    assert all(40 <= n <= 196 and n % 4 == 0 for n in out.lengths.tolist())
    assert torch.equal(out.lengths, pipe(PROMPTS, seed=1, steps=1).lengths)
    fixed = pipe(PROMPTS, seed=1, steps=1, length_mode="argmax").lengths
    assert torch.equal(fixed, pipe(PROMPTS, seed=9, steps=1, length_mode="argmax").lengths)


def test_ablation_without_retrieval_needs_no_retrieval_component():
    pipe = tiny_pipeline(retrieval=False, ablation="no_retrieval")
    out = pipe(PROMPTS[:1], lengths=[60], seed=0, steps=1)
    assert out.neighbours == [[]] and out.lengths.tolist() == [60]


def test_bad_input_is_a_one_line_error():
    from models.pipeline import PipelineError
    from models.text_encoders import TextEncoderError

    pipe = tiny_pipeline(estimator=False)
    with pytest.raises(PipelineError, match=r"length 20 frames is outside the HumanML3D range \[40, 196\]"):
        pipe(PROMPTS[:1], lengths=[20])
    with pytest.raises(PipelineError, match="no lengths given and no length estimator"):
        pipe(PROMPTS[:1])
    with pytest.raises(PipelineError, match="one length or one per prompt"):
        pipe(PROMPTS, lengths=[60, 60])
    with pytest.raises((TextEncoderError, ValueError), match="empty"):
        pipe(["  "], lengths=[60])
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe(PROMPTS[:1], lengths=[60], guidance_scale=-1.0)
    with pytest.raises(PipelineError, match="conditioned on retrieval"):
        from models.pipeline import ReMoMaskPipeline
        ReMoMaskPipeline(pipe.tokenizer, pipe.text_encoder, pipe.mask, pipe.residual, retrieval=None)


def test_a_prompt_longer_than_the_text_encoder_reads_is_truncated_with_a_warning():
    from models.text_encoders import CLIPTextConfig, CLIPTextEncoder, token_counts

    pipe = tiny_pipeline()
    long = "a person walks forward and then " * 40
    with pytest.warns(UserWarning, match=r"has \d+ tokens, more than the 128 the text encoder reads; it is truncated"):
        out = pipe(long, lengths=[60], seed=0, steps=1)
    assert out.lengths.tolist() == [60]
    clip = CLIPTextEncoder(CLIPTextConfig.tiny(), random_init=True)
    (need, limit), = token_counts(clip, [long])
    assert limit == 77 and need > 77
    assert token_counts(clip, ["a person walks"]) == [(5, 77)]          # start + 3 words + end


def test_evaluation_lengths_below_the_dataset_minimum_are_accepted_when_not_strict():
    """The reference eval crop (len // 4 − 1)·4 gives 36 frames for a 40-frame motion: eval passes strict=False."""
    from models.pipeline import PipelineError

    pipe = tiny_pipeline()
    assert pipe.check_lengths([36, 41], strict=False).tolist() == [36, 40]
    with pytest.raises(PipelineError, match="outside the HumanML3D range"):
        pipe.check_lengths([36])
    with pytest.raises(PipelineError, match=r"range \[4, 196\]"):
        pipe.check_lengths([2], strict=False)
    out = pipe(PROMPTS[:1], lengths=[36], seed=0, steps=1, strict_lengths=False)
    assert out.lengths.tolist() == [36] and out.motion(0).shape == (36, 22, 3)


def test_the_length_estimator_must_read_the_same_text_feature():
    from models.length_estimator import LengthEstimator, LengthEstimatorConfig
    from models.pipeline import PipelineError, ReMoMaskPipeline

    pipe = tiny_pipeline()
    wrong = LengthEstimator(LengthEstimatorConfig(text_dim=pipe.text_encoder.out_dim + 1, hidden=[8]))
    with pytest.raises(PipelineError, match="length estimator expects"):
        ReMoMaskPipeline(pipe.tokenizer, pipe.text_encoder, pipe.mask, pipe.residual, pipe.retrieval, wrong)
