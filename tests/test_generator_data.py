"""The shared generator data: token cache (built once, reused, rebuilt for another tokenizer), crops within the
lengths, text-feature and retrieval caches, and the retrieval exclusion of the query's own motion and its mirror."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datasets.motion_dataset import DataConfig, MotionCorpus, get_spec
from models.text_encoders import TextEncoderConfig
from utils.tasks import generator_data as gd
from utils.tasks.generator_data import (FrozenUpstream, GeneratorDataError, GeneratorDataset, GeneratorUpstreamConfig,
                                        check_lengths, collate_generator)

pytestmark = pytest.mark.usefixtures("one_thread")


def _upstream(tiny_upstream, cache_dir, **kw) -> GeneratorUpstreamConfig:
    return GeneratorUpstreamConfig(tokenizer=tiny_upstream["tokenizer"], retriever=tiny_upstream["retriever"],
                                   text=TextEncoderConfig(name="minilm", tiny=True), cache_dir=str(cache_dir),
                                   encode_batch_size=16, **kw)


@pytest.fixture(scope="module")
def frozen(tiny_upstream, tmp_path_factory):
    torch.manual_seed(0)
    cfg = _upstream(tiny_upstream, tmp_path_factory.mktemp("cache"))
    return FrozenUpstream.load(cfg, "t2m", "cpu")


@pytest.fixture(scope="module")
def train_set(frozen, mini_root):
    ds = GeneratorDataset(DataConfig(root=str(mini_root)), "train")
    return ds.prepare(frozen, frozen.cfg.cache_dir)


def test_token_cache_holds_the_tokenizer_encoding_of_each_full_entry(train_set, frozen):
    corpus = train_set.corpus
    for i in (0, len(corpus.entries) // 2, len(corpus.entries) - 1):
        e = corpus.entries[i]
        frames = e.length // 4 * 4
        raw = torch.from_numpy(corpus.entry_motion(e)[:frames].copy())[None]
        expected = frozen.tokenizer.encode(raw)[0]
        n = int(train_set.lengths_tokens[i])
        assert n == frames // 4
        torch.testing.assert_close(train_set.tokens[i, :n].long(), expected.long(), rtol=0, atol=0)
        assert (train_set.tokens[i, n:] == -1).all()


def test_token_cache_is_reused_and_rebuilt_when_the_fingerprint_changes(frozen, mini_root, tmp_path, monkeypatch):
    corpus = MotionCorpus.load(DataConfig(root=str(mini_root)), "val")
    path = tmp_path / "tok.pt"
    calls = []
    real_encode = frozen.tokenizer.encode

    def counting(raw, lengths=None):
        calls.append(raw.shape[0])
        return real_encode(raw, lengths)

    monkeypatch.setattr(frozen.tokenizer, "encode", counting)
    first, lengths = gd.build_token_cache(corpus, frozen.tokenizer, path, 16)
    built = len(calls)
    assert sum(calls) == len(corpus.entries) and path.is_file()
    again, _ = gd.build_token_cache(corpus, frozen.tokenizer, path, 16)
    assert len(calls) == built                                   # reused: no encoder call
    torch.testing.assert_close(again, first)
    monkeypatch.setattr(type(frozen.tokenizer), "fingerprint", property(lambda self: "another-tokenizer"))
    gd.build_token_cache(corpus, frozen.tokenizer, path, 16)
    assert sum(calls[built:]) == len(corpus.entries)             # rebuilt for the other fingerprint
    assert torch.load(path, weights_only=True)["key"]["fingerprint"] == "another-tokenizer"


def test_crops_stay_inside_the_lengths_and_follow_seed_epoch_index(train_set):
    tmax = train_set.tmax
    for epoch in (0, 1):
        train_set.set_epoch(epoch, seed=3)
        for i in range(len(train_set)):
            item = train_set[i]
            n = item["length_tokens"]
            assert 1 <= n <= int(train_set.lengths_tokens[i]) and item["length"] == 4 * n
            assert item["tokens"].shape == (tmax, 7, train_set.tokens.shape[-1])
            assert (item["tokens"][:n] >= 0).all() and (item["tokens"][n:] == -1).all()
            assert item["caption"] in [c.caption for c in train_set.entries[i].captions]
    train_set.set_epoch(1, seed=3)
    a = train_set[5]
    train_set.set_epoch(1, seed=3)
    torch.testing.assert_close(train_set[5]["tokens"], a["tokens"])
    crops = {(train_set.set_epoch(e, seed=3), train_set[5]["length_tokens"], tuple(train_set[5]["tokens"][0, 0].tolist()))
             for e in range(12)}
    assert len(crops) > 1                                        # different epochs draw different crops


def test_text_features_are_the_frozen_encoders_and_cached(train_set, frozen):
    i = 3
    item = train_set[i]
    torch.testing.assert_close(item["t"], frozen.encode_texts([item["caption"]])[0], rtol=1e-5, atol=1e-6)
    names = [p.name for p in Path(frozen.cfg.cache_dir).iterdir()]
    assert f"gen_text.train.{frozen.text_key}.pt" in names


def test_retrieval_never_returns_the_querys_own_motion_or_its_mirror(train_set):
    assert train_set.retrieved is not None
    for i in range(len(train_set)):
        item = train_set[i]
        own = item["motion_id"].removeprefix("M")
        for rid in item["retrieved_id"]:
            assert rid.removeprefix("M") != own
    batch = collate_generator([train_set[0], train_set[1]])
    assert batch["r_t"].shape == (2, 1, train_set.retrieval_dim) and batch["tokens"].dtype == torch.long


def test_exclusion_none_may_retrieve_the_query_itself(frozen, mini_root, tmp_path):
    cfg = GeneratorUpstreamConfig(**{**frozen.cfg.__dict__, "exclude": "none", "cache_dir": str(tmp_path)})
    other = FrozenUpstream(cfg, frozen.tokenizer, frozen.text_encoder, frozen.query_encoder, frozen.database)
    ds = GeneratorDataset(DataConfig(root=str(mini_root)), "train").prepare(other, tmp_path)
    # the database holds these very captions: with no exclusion, the query's own motion ranks first for most
    own = sum(ds.motion_ids[p] == ds.frozen.database.motion_ids[int(ds.retrieved[p, 0])]
              for p in range(len(ds.captions)))
    assert own > 0
    files = list(tmp_path.glob("gen_retrieval.train.*.pt"))
    assert len(files) == 1 and torch.load(files[0], weights_only=True)["key"]["exclude"] == "none"
    # another exclusion gets another file: both caches survive side by side (ablations, back-and-forth runs)
    GeneratorDataset(DataConfig(root=str(mini_root)), "train").prepare(frozen, tmp_path)
    assert len(list(tmp_path.glob("gen_retrieval.train.*.pt"))) == 2


def test_check_lengths_names_the_dataset_range():
    spec = get_spec("t2m")
    assert check_lengths([36, 196], spec).tolist() == [36, 196]     # the dataset's crops go one unit below 40
    with pytest.raises(GeneratorDataError, match=r"lengths=200: expected frames in the t2m range \[36, 196\]"):
        check_lengths([40, 200], spec)
    with pytest.raises(GeneratorDataError, match=r"lengths=32: .*\[36, 196\]"):
        check_lengths([32], spec)
    assert gd.length_range(get_spec("kit")) == (20, 196)
    with pytest.raises(GeneratorDataError, match="multiple of 4"):
        check_lengths([42], spec)


def test_unprepared_dataset_says_what_to_do(mini_root):
    ds = GeneratorDataset(DataConfig(root=str(mini_root)), "val")
    with pytest.raises(GeneratorDataError, match="not prepared"):
        ds[0]
