"""models/length_estimator.py: length classes in units of 4 frames, the dataset's range, sampling and argmax."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.length_estimator import LengthEstimator, LengthEstimatorConfig, bin_to_frames, frames_to_bin

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = 10


def tiny(dataset: str = "t2m", seed: int = 0, **kw) -> LengthEstimator:
    torch.manual_seed(seed)
    return LengthEstimator(LengthEstimatorConfig(**(dict(dataset=dataset, text_dim=TEXT, hidden=[16, 8]) | kw))).eval()


def test_bins_round_trip_to_frames():
    frames = torch.arange(4, 197, 4)
    assert torch.equal(bin_to_frames(frames_to_bin(frames)), frames)
    bins = torch.arange(50)
    assert torch.equal(frames_to_bin(bin_to_frames(bins)), bins)
    assert frames_to_bin(torch.tensor([43, 196, 199])).tolist() == [10, 49, 49]   # frames // 4


@pytest.mark.parametrize("dataset, lo, hi", [("t2m", 40, 196), ("kit", 24, 196)])
def test_range_comes_from_the_dataset_registry(dataset, lo, hi):
    model = tiny(dataset)
    assert model.cfg.length_range == (lo, hi)
    assert model.cfg.bin_range == (lo // 4, hi // 4)
    logits = model.logits(torch.randn(3, TEXT))
    k = torch.arange(50)
    assert torch.isinf(logits[:, (k < lo // 4) | (k > hi // 4)]).all()
    assert torch.isfinite(logits[:, (k >= lo // 4) & (k <= hi // 4)]).all()


@pytest.mark.parametrize("mode", ["sample", "argmax"])
@pytest.mark.parametrize("dataset", ["t2m", "kit"])
def test_predicted_lengths_stay_in_range_and_on_the_unit(mode, dataset):
    model = tiny(dataset)
    with torch.no_grad():                                   # push the mass towards the excluded short bins
        model.net[-1].bias[:5] = 50.0
    frames = model.predict(torch.randn(500, TEXT) * 5, mode=mode, generator=torch.Generator().manual_seed(0))
    lo, hi = model.cfg.length_range
    assert frames.dtype == torch.long and bool((frames % 4 == 0).all())
    assert int(frames.min()) >= lo and int(frames.max()) <= hi


def test_argmax_mode_is_the_most_likely_bin():
    model = tiny()
    t = torch.randn(6, TEXT)
    assert torch.equal(model.predict(t, mode="argmax"), 4 * model.probabilities(t).argmax(-1))


def test_sample_mode_draws_from_the_distribution_with_the_generator():
    model = tiny()
    t = torch.randn(1, TEXT).expand(4000, TEXT)
    a = model.predict(t, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, model.predict(t, generator=torch.Generator().manual_seed(1)))
    freq = torch.bincount(frames_to_bin(a), minlength=50).float() / 4000
    torch.testing.assert_close(freq, model.probabilities(t[:1])[0], atol=0.03, rtol=0)


def test_loss_is_cross_entropy_of_the_clamped_length_class():
    model = tiny()
    t = torch.randn(3, TEXT)
    lengths = torch.tensor([20, 100, 196])                  # 20 frames is below the t2m range: class 10
    loss, logs = model(t, lengths)
    expected = F.cross_entropy(model.logits(t), torch.tensor([10, 25, 49]))
    torch.testing.assert_close(loss, expected)
    assert set(logs) == {"loss", "acc", "within1"}


@pytest.mark.parametrize("kw, key", [(dict(dataset="amass"), "dataset"), (dict(max_length=400), "max_length"),
                                     (dict(min_length=200, max_length=100), "min_length"),
                                     (dict(hidden=[]), "hidden")])
def test_bad_config_names_the_key(kw, key):
    with pytest.raises(ValueError, match=f"model.{key}"):
        tiny(**kw)


def test_bad_arguments_name_them():
    model = tiny()
    with pytest.raises(ValueError, match="argument 'mode'"):
        model.predict(torch.randn(2, TEXT), mode="mean")
    with pytest.raises(ValueError, match="argument 't'"):
        model.predict(torch.randn(2, TEXT + 1))
    with pytest.raises(ValueError, match="argument 'lengths'"):
        model(torch.randn(2, TEXT), torch.tensor([40.0, 80.0]))
