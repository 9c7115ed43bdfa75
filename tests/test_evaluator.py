"""The standard evaluator: official layout loading, a from-scratch packed BiGRU reference, order preservation, errors."""
import numpy as np
import pytest
import torch

from models import evaluator as ev

SMALL = dict(dim_word=12, dim_pos_ohot=15, dim_text_hidden=8, dim_motion_hidden=10, dim_coemb_hidden=6,
             dim_movement_enc_hidden=9, dim_movement_latent=7)


def save_official(root, dataset="t2m", seed=0, meta_sub="Comp_v6_KLD005/meta", **widths):
    """Random small encoders saved exactly like the release: checkpoints/<ds>/text_mot_match/model/finest.tar with
    Adam states and int epoch/iter, and checkpoints/<ds>/Comp_v6_KLD005/meta/{mean,std}.npy."""
    torch.manual_seed(seed)
    cfg = ev.EvaluatorConfig.for_dataset(dataset, **(widths or SMALL))
    text, motion, movement = ev.build_encoders(cfg)
    opts = []
    for m in (text, motion):
        opt = torch.optim.Adam(m.parameters(), lr=1e-4)
        m.zero_grad()
        sum(p.sum() for p in m.parameters()).backward()
        opt.step()
        opts.append(opt.state_dict())
    state = ev.evaluator_state(text, motion, movement, opt_text_encoder=opts[0], opt_motion_encoder=opts[1],
                               epoch=12, iter=3456)
    ds = root / "checkpoints" / dataset
    (ds / "text_mot_match" / "model").mkdir(parents=True)
    path = ds / "text_mot_match" / "model" / "finest.tar"
    torch.save(state, path)
    meta = ds / meta_sub
    meta.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    np.save(meta / "mean.npy", rng.normal(size=cfg.dim_pose).astype(np.float32))
    np.save(meta / "std.npy", rng.uniform(0.5, 2, size=cfg.dim_pose).astype(np.float32))
    return path, state, cfg


# ------------------------------------------------------------------------------------- a reference by hand

def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    gi, gh = w_ih @ x + b_ih, w_hh @ h + b_hh
    n = h.shape[0]
    r = torch.sigmoid(gi[:n] + gh[:n])
    z = torch.sigmoid(gi[n:2 * n] + gh[n:2 * n])
    c = torch.tanh(gi[2 * n:] + r * gh[2 * n:])
    return (1 - z) * c + z * h


def bigru_final(seq, length, sd, prefix, hidden):
    """Final forward / backward states of a bidirectional GRU run over seq[:length] (what packing computes)."""
    w = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    h = hidden[0, 0]
    for t in range(length):
        h = gru_step(seq[t], h, w["weight_ih_l0"], w["weight_hh_l0"], w["bias_ih_l0"], w["bias_hh_l0"])
    hb = hidden[1, 0]
    for t in reversed(range(length)):
        hb = gru_step(seq[t], hb, w["weight_ih_l0_reverse"], w["weight_hh_l0_reverse"], w["bias_ih_l0_reverse"],
                      w["bias_hh_l0_reverse"])
    return torch.cat([h, hb])


def head(x, sd):
    x = x @ sd["output_net.0.weight"].T + sd["output_net.0.bias"]
    x = torch.nn.functional.layer_norm(x, x.shape[-1:], sd["output_net.1.weight"], sd["output_net.1.bias"])
    x = torch.nn.functional.leaky_relu(x, 0.2)
    return x @ sd["output_net.3.weight"].T + sd["output_net.3.bias"]


def ref_text(sd, word, pos, length):
    x = (word + pos @ sd["pos_emb.weight"].T + sd["pos_emb.bias"]) @ sd["input_emb.weight"].T + sd["input_emb.bias"]
    return head(bigru_final(x, length, sd, "gru.", sd["hidden"]), sd)


def ref_motion(sd_mov, sd_mot, motion, frames):
    x = motion[:, :-4].T[None]                                                     # (1, D-4, T)
    x = torch.nn.functional.leaky_relu(torch.nn.functional.conv1d(x, sd_mov["main.0.weight"], sd_mov["main.0.bias"],
                                                                  stride=2, padding=1), 0.2)
    x = torch.nn.functional.leaky_relu(torch.nn.functional.conv1d(x, sd_mov["main.3.weight"], sd_mov["main.3.bias"],
                                                                  stride=2, padding=1), 0.2)
    x = x[0].T @ sd_mov["out_net.weight"].T + sd_mov["out_net.bias"]               # (T/4, latent)
    x = x @ sd_mot["input_emb.weight"].T + sd_mot["input_emb.bias"]
    return head(bigru_final(x, frames // 4, sd_mot, "gru.", sd_mot["hidden"]), sd_mot)


def test_full_size_state_dict_names_and_shapes_match_reference():
    text, motion, movement = ev.build_encoders(ev.EvaluatorConfig.for_dataset("t2m"))
    t, m, mv = text.state_dict(), motion.state_dict(), movement.state_dict()
    assert mv["main.0.weight"].shape == (512, 259, 4) and mv["main.3.weight"].shape == (512, 512, 4)
    assert set(mv) == {"main.0.weight", "main.0.bias", "main.3.weight", "main.3.bias", "out_net.weight",
                       "out_net.bias"}
    assert t["hidden"].shape == (2, 1, 512) and t["pos_emb.weight"].shape == (300, 15)
    assert t["input_emb.weight"].shape == (512, 300) and t["gru.weight_ih_l0_reverse"].shape == (1536, 512)
    assert t["output_net.0.weight"].shape == (512, 1024) and t["output_net.3.weight"].shape == (512, 512)
    assert m["hidden"].shape == (2, 1, 1024) and m["input_emb.weight"].shape == (1024, 512)
    assert m["gru.weight_hh_l0"].shape == (3072, 1024) and m["output_net.0.weight"].shape == (1024, 2048)
    assert m["output_net.1.weight"].shape == (1024,) and m["output_net.3.weight"].shape == (512, 1024)
    kit = ev.build_encoders(ev.EvaluatorConfig.for_dataset("kit"))[2].state_dict()
    assert kit["main.0.weight"].shape == (512, 247, 4)


def test_official_layout_loads_with_weights_only(tmp_path):
    path, state, _ = save_official(tmp_path)
    raw = torch.load(path, weights_only=True)                  # Adam states and ints pass the safe unpickler
    assert raw["epoch"] == 12 and raw["iter"] == 3456 and "state" in raw["opt_text_encoder"]
    e = ev.load_official_evaluator(path, dataset="t2m")
    torch.testing.assert_close(e.text_encoder.state_dict()["hidden"], state["text_encoder"]["hidden"])
    mean = np.load(tmp_path / "checkpoints/t2m/Comp_v6_KLD005/meta/mean.npy")
    np.testing.assert_array_equal(e.mean.numpy(), mean)
    assert not e.training and not e.text_encoder.training
    e.train()
    assert not e.training and not e.movement_encoder.training      # always eval mode


def test_encodings_match_hand_written_packed_bigru_and_keep_order(tmp_path):
    path, state, cfg = save_official(tmp_path, seed=1)
    e = ev.load_official_evaluator(path, dataset="t2m")
    g = torch.Generator().manual_seed(0)
    b, lmax, tmax = 5, 22, 40
    word = torch.randn(b, lmax, cfg.dim_word, generator=g)
    pos = torch.nn.functional.one_hot(torch.randint(0, 15, (b, lmax), generator=g), 15).float()
    sent_len = torch.tensor([4, 22, 9, 9, 13])                  # unsorted, with a tie
    m_len = torch.tensor([20, 40, 8, 36, 24])                   # unsorted frames (multiples of 4)
    motion = torch.randn(b, tmax, cfg.dim_pose, generator=g)
    for i, n in enumerate(m_len):
        motion[i, n:] = 0                                       # zero-padded past the length, as the loader does
    got_t = e.encode_text(word, pos, sent_len)
    got_m = e.encode_motion(motion, m_len)
    assert got_t.shape == (b, cfg.dim_coemb_hidden) and got_m.shape == (b, cfg.dim_coemb_hidden)
    with torch.no_grad():
        exp_t = torch.stack([ref_text(state["text_encoder"], word[i], pos[i], int(sent_len[i])) for i in range(b)])
        exp_m = torch.stack([ref_motion(state["movement_encoder"], state["motion_encoder"], motion[i], int(m_len[i]))
                             for i in range(b)])
    torch.testing.assert_close(got_t, exp_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_m, exp_m, atol=1e-5, rtol=1e-5)
    # numpy input gives the same result; no gradient is recorded
    torch.testing.assert_close(e.encode_motion(motion.numpy(), m_len.numpy()), got_m)
    assert not got_m.requires_grad


def test_normalize_for_evaluator_uses_meta_stats(tmp_path):
    path, _, cfg = save_official(tmp_path)
    e = ev.load_official_evaluator(path)
    raw = np.random.default_rng(0).normal(size=(2, 3, cfg.dim_pose)).astype(np.float32)
    mean = np.load(tmp_path / "checkpoints/t2m/Comp_v6_KLD005/meta/mean.npy")
    std = np.load(tmp_path / "checkpoints/t2m/Comp_v6_KLD005/meta/std.npy")
    np.testing.assert_allclose(e.normalize_for_evaluator(raw), (raw - mean) / std, rtol=1e-6)
    torch.testing.assert_close(e.normalize_for_evaluator(torch.from_numpy(raw)), torch.from_numpy((raw - mean) / std))
    with pytest.raises(ValueError, match="263 dims"):
        e.normalize_for_evaluator(np.zeros((2, 251)))


def test_explicit_meta_dir_and_text_mot_match_meta(tmp_path):
    path, _, _ = save_official(tmp_path, meta_sub="text_mot_match/meta")
    e = ev.load_official_evaluator(path)                       # found in text_mot_match/meta
    e2 = ev.load_official_evaluator(path, meta_dir=tmp_path / "checkpoints/t2m/text_mot_match/meta")
    torch.testing.assert_close(e.std, e2.std)


def test_missing_file_error_says_what_is_expected(tmp_path):
    with pytest.raises(ev.EvaluatorLoadError, match="not found.*text_mot_match/model/finest.tar"):
        ev.load_official_evaluator(tmp_path / "nope.tar")


def test_truncated_file_error_names_file(tmp_path):
    path, _, _ = save_official(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ev.EvaluatorLoadError, match="truncated"):
        ev.load_official_evaluator(path)


def test_other_dataset_checkpoint_is_refused(tmp_path):
    path, _, _ = save_official(tmp_path, dataset="kit")
    with pytest.raises(ev.EvaluatorLoadError, match="251-d.*'kit'.*dataset='t2m' needs 263-d"):
        ev.load_official_evaluator(path, dataset="t2m")


def test_missing_meta_error_lists_places(tmp_path):
    path, _, _ = save_official(tmp_path)
    for f in (tmp_path / "checkpoints/t2m/Comp_v6_KLD005/meta").iterdir():
        f.unlink()
    with pytest.raises(ev.EvaluatorLoadError, match="Comp_v6_KLD005/meta"):
        ev.load_official_evaluator(path)


def test_wrong_keys_error(tmp_path):
    p = tmp_path / "x.tar"
    torch.save({"model": {}}, p)
    with pytest.raises(ev.EvaluatorLoadError, match="missing keys"):
        ev.load_official_evaluator(p)


def test_opt_txt_round_trip(tmp_path):
    opts = {"name": "text_mot_match", "dim_pose": 263, "lr": 0.0001, "is_train": True, "feat_bias": 5.0}
    ev.write_opt_txt(tmp_path / "opt.txt", opts)
    text = (tmp_path / "opt.txt").read_text()
    assert text.startswith("------------ Options -------------\n") and "dim_pose: 263\n" in text
    assert ev.read_opt_txt(tmp_path / "opt.txt") == opts
