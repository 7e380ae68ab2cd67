"""fasteplb.workloads: generator invariants, calibration bands, trace I/O, statistics.

The real matrices are read from ../shared/data/real (or $FASTEPLB_REAL_DATA); those tests
skip when the folder is absent.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from fasteplb import workloads as wl
from fasteplb.workloads import _sampler, _traces
from fasteplb.workloads._stats import _spearman
from hypothesis import given, settings
from hypothesis import strategies as st


def _real_dir() -> Path:
    env = os.environ.get("FASTEPLB_REAL_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


REAL = _real_dir()
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="real load matrices not present")


# ----------------------------------------------------------------------------------------
# Tables.
# ----------------------------------------------------------------------------------------


def test_model_shapes_match_the_table():
    expected = {
        "deepseek-v3": (58, 256, 8, 8),
        "kimi-k2": (60, 384, 8, 1),
        "qwen3-235b": (94, 128, 8, 1),
        "qwen3-30b": (48, 128, 8, 1),
        "qwen2-57b": (28, 64, 8, 1),
        "deepseek-v2-lite": (26, 64, 6, 1),
        "gpt-oss-120b": (36, 128, 4, 1),
        "mixtral-8x7b": (32, 8, 2, 1),
    }
    got = {k: (m.layers, m.experts, m.top_k, m.groups) for k, m in wl.MODELS.items()}
    assert got == expected


def test_profiles_are_the_five_documented_ones():
    assert set(wl.PROFILES) == {
        "qwen3-like",
        "deepseek-v3-like",
        "aux-loss-balanced",
        "near-uniform",
        "stress",
    }
    for p in wl.PROFILES.values():
        assert isinstance(p, wl.Profile)
        assert p.traffic in wl.TRAFFIC


# ----------------------------------------------------------------------------------------
# Generator invariants.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(wl.PROFILES))
def test_every_row_sums_to_top_k_times_tokens(profile):
    trace = wl.generate(profile, "qwen2-57b", 30, seed=3)
    tokens = wl.PROFILES[profile].tokens_per_step
    assert trace.shape == (30, 28, 64)
    assert trace.dtype == np.int64
    assert trace.min() >= 0
    assert np.all(trace.sum(axis=2) == 8 * tokens)


@pytest.mark.parametrize(
    ("model", "kwargs"),
    [
        ("mixtral-8x7b", {}),
        ("deepseek-v2-lite", {"tokens_per_step": 1}),
        ("kimi-k2", {"tokens_per_step": 64, "top_k": 2}),  # small batch: exact multinomial
        ((3, 5), {"tokens_per_step": 7, "top_k": 5}),
        ((2, 1, 1), {}),
        ("qwen3-30b", {"traffic": "prefill-heavy", "tokens_per_step": 20000}),
        ("gpt-oss-120b", {"traffic": "small-batch", "tokens_per_step": 96}),
    ],
)
def test_row_sums_for_edge_shapes_and_overrides(model, kwargs):
    trace, meta = wl.generate("qwen3-like", model, 12, seed=1, return_meta=True, **kwargs)
    layers, experts = meta["shape"]["layers"], meta["shape"]["experts"]
    assert trace.shape == (12, layers, experts)
    assert np.all(trace.sum(axis=2) == meta["top_k"] * meta["tokens_per_step"])
    if "top_k" in kwargs:
        assert meta["top_k"] == kwargs["top_k"]
    assert meta["mixture"].shape == (12, wl.PROFILES["qwen3-like"].domains)
    np.testing.assert_allclose(meta["mixture"].sum(axis=1), 1.0)


@settings(max_examples=25, deadline=None)
@given(
    profile=st.sampled_from(sorted(wl.PROFILES)),
    layers=st.integers(1, 4),
    experts=st.integers(1, 48),
    k_frac=st.floats(0.0, 1.0),
    tokens=st.integers(1, 5000),
    steps=st.integers(1, 6),
    seed=st.integers(0, 2**32),
)
def test_row_sums_hold_for_any_shape(profile, layers, experts, k_frac, tokens, steps, seed):
    top_k = 1 + int(k_frac * (experts - 1))
    trace = wl.generate(
        profile, (layers, experts), steps, seed=seed, tokens_per_step=tokens, top_k=top_k
    )
    assert trace.shape == (steps, layers, experts)
    assert trace.min() >= 0
    assert np.all(trace.sum(axis=2) == top_k * tokens)


@pytest.mark.parametrize(("experts", "n", "alpha"), [(128, 32768, 0.3), (64, 512, 3.0)])
def test_count_sampler_matches_the_multinomial_moments(experts, n, alpha):
    # The fast sampler (exact Poisson for small cells, skew-corrected normal above) against
    # numpy's exact multinomial: per-cell means and variances, and the mean of the maximum.
    rng = np.random.default_rng(0)
    p = rng.gamma(alpha, size=experts)
    p /= p.sum()
    rows = 4000
    out = np.empty((rows, experts), dtype=np.int64)
    _sampler._sample_counts(
        np.random.default_rng(1), n, np.tile(p * n, (rows, 1)), out, _sampler._Workspace(out.size)
    )
    exact = np.random.default_rng(2).multinomial(n, np.tile(p, (rows, 1)))
    assert np.all(out.sum(axis=1) == n) and out.min() >= 0
    lam = n * p
    se = np.sqrt(lam * (1 - p) / rows)
    assert np.all(np.abs(out.mean(axis=0) - lam) <= 5 * se + 1e-9)
    busy = lam > 5
    ratio = out.var(axis=0)[busy] / exact.var(axis=0)[busy]
    assert 0.97 <= np.median(ratio) <= 1.03
    assert np.all((ratio > 0.85) & (ratio < 1.15))
    assert out.max(axis=1).mean() == pytest.approx(exact.max(axis=1).mean(), rel=0.01)


def test_same_seed_same_trace_other_seed_other_trace():
    a = wl.generate("stress", "qwen3-30b", 20, seed=11)
    b = wl.generate("stress", "qwen3-30b", 20, seed=11)
    c = wl.generate("stress", "qwen3-30b", 20, seed=12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_result_does_not_depend_on_the_thread_count(monkeypatch):
    # Enough steps for several sampler chunks.
    ref = wl.generate("deepseek-v3-like", "deepseek-v3", 40, seed=5)
    monkeypatch.setattr(_sampler, "_threads", lambda: 1)
    np.testing.assert_array_equal(wl.generate("deepseek-v3-like", "deepseek-v3", 40, seed=5), ref)
    monkeypatch.setattr(_sampler, "_threads", lambda: 3)
    np.testing.assert_array_equal(wl.generate("deepseek-v3-like", "deepseek-v3", 40, seed=5), ref)


def test_popularity_does_not_depend_on_steps_and_matches_domain_popularity():
    _, short = wl.generate("qwen3-like", "qwen2-57b", 5, seed=9, return_meta=True)
    _, long = wl.generate("qwen3-like", "qwen2-57b", 50, seed=9, return_meta=True)
    np.testing.assert_array_equal(short["domain_popularity"], long["domain_popularity"])
    np.testing.assert_array_equal(short["mixture"], long["mixture"][:5])
    dom = wl.domain_popularity("qwen3-like", "qwen2-57b", seed=9)
    np.testing.assert_array_equal(dom, short["domain_popularity"])
    assert dom.shape == (4, 28, 64)
    np.testing.assert_allclose(dom.sum(axis=2), 1.0)


def test_meta_describes_the_draw():
    _, meta = wl.generate("deepseek-v3-like", "deepseek-v3", 10, seed=2, return_meta=True)
    assert meta["profile"] == "deepseek-v3-like"
    assert meta["model"] == "deepseek-v3"
    assert meta["params"]["p_hot"] == wl.PROFILES["deepseek-v3-like"].p_hot
    assert meta["alpha"].shape == (58,) and np.all(meta["alpha"] > 0)
    hot = meta["hot_expert"] >= 0
    assert hot.sum() == round(0.6 * 58)
    assert np.all((meta["m_hot"][hot] >= 1.5) & (meta["m_hot"][hot] <= 3.0))
    # The super-hot expert is the hottest of its layer in every domain.
    dom = meta["domain_popularity"]
    layers = np.flatnonzero(hot)
    assert np.all(dom[:, layers].argmax(axis=2) == meta["hot_expert"][layers])
    json.dumps(_traces._jsonable(meta))


# ----------------------------------------------------------------------------------------
# Calibration: each profile lands in the bands of the module docstring.
# ----------------------------------------------------------------------------------------


def _stats(profile, model, steps, window, gpus, seed=0):
    trace, meta = wl.generate(profile, model, steps, seed=seed, return_meta=True)
    return wl.statistics(
        trace,
        window=window,
        num_gpus_list=gpus,
        regime=meta["regime"],
        domain_popularity=meta["domain_popularity"],
    )


def test_qwen3_like_hits_its_targets():
    s = _stats("qwen3-like", "qwen3-235b", 600, 100, (8, 16, 32))
    assert 8.5 <= s["expert_max_mean"] <= 13.5
    assert 0.44 <= s["top_share"] <= 0.58
    assert 0.18 <= s["cold_fraction"] <= 0.40
    assert 1.5 <= s["identity"][8] <= 2.0
    assert 2.0 <= s["identity"][16] <= 2.9
    assert 3.0 <= s["identity"][32] <= 4.6
    assert s["eplb"][32] <= 1.05
    assert s["rank_corr_consecutive_skewed"] >= 0.9
    assert -0.1 <= s["cross_domain_rank_corr"] <= 0.2


def test_deepseek_v3_like_hits_its_per_step_targets():
    s = _stats("deepseek-v3-like", "deepseek-v3", 200, 1, (32,))
    assert 9.0 <= s["expert_max_mean"] <= 15.0
    assert 0.33 <= s["top_share"] <= 0.47
    assert 0.03 <= s["cold_fraction"] <= 0.17
    assert 2.2 <= s["identity"][32] <= 3.0
    lo, hi = s["identity_layers"][32]
    assert 1.3 <= lo and hi <= 4.0
    # In-sample the 33 spare slots all but erase the imbalance; TensorRT-LLM's 1.11 is an
    # online balancer's, which plans on past steps.
    assert s["eplb"][32] <= 1.05
    assert 1.05 <= s["eplb_next"][32] <= 1.2
    assert s["rank_corr_consecutive"] >= 0.9
    assert 0.15 <= s["cross_domain_rank_corr"] <= 0.45


def test_aux_loss_balanced_hits_its_targets():
    s = _stats("aux-loss-balanced", "qwen2-57b", 600, 100, (4, 8, 16))
    assert 1.3 <= s["expert_max_mean"] <= 1.8
    assert 2.5 <= s["expert_max_mean_worst"] <= 8.0
    assert 0.11 <= s["top_share"] <= 0.16
    assert s["cold_fraction"] <= 0.02
    assert 1.05 <= s["identity"][4] <= 1.18
    assert 1.12 <= s["identity"][8] <= 1.35
    assert s["eplb"][16] <= 1.06
    assert s["rank_corr_consecutive"] >= 0.8
    assert 0.35 <= s["cross_domain_rank_corr"] <= 0.65


def test_near_uniform_and_stress_bracket_the_others():
    uniform = _stats("near-uniform", "qwen2-57b", 300, 100, (8,))
    assert uniform["expert_max_mean"] <= 1.6
    assert uniform["identity"][8] <= 1.12
    assert uniform["cold_fraction"] == 0.0
    stress, meta = wl.generate("stress", "deepseek-v3", 200, return_meta=True)
    s = wl.statistics(stress, window=100)
    assert s["expert_max_mean"] >= 15.0
    # Regimes of ~20 steps and prefill batches: the hot set moves between windows.
    qwen = wl.statistics(wl.generate("qwen3-like", "deepseek-v3", 200), window=100)
    assert s["rank_corr_consecutive"] < qwen["rank_corr_consecutive"]
    assert len(np.unique(meta["regime"])) >= 4


# ----------------------------------------------------------------------------------------
# windows().
# ----------------------------------------------------------------------------------------


def test_windows_sum_consecutive_steps_and_drop_the_tail():
    trace = np.arange(7 * 2 * 3).reshape(7, 2, 3)
    w = wl.windows(trace, 3)
    assert w.shape == (2, 2, 3)
    np.testing.assert_array_equal(w[0], trace[:3].sum(axis=0))
    np.testing.assert_array_equal(w[1], trace[3:6].sum(axis=0))
    np.testing.assert_array_equal(wl.windows(trace, 1), trace)
    np.testing.assert_array_equal(wl.windows(trace, 7)[0], trace.sum(axis=0))


@pytest.mark.parametrize(("size", "exc"), [(0, ValueError), (8, ValueError), (2.0, TypeError)])
def test_windows_rejects_bad_sizes(size, exc):
    with pytest.raises(exc, match="size"):
        wl.windows(np.zeros((7, 2, 3)), size)


def test_windows_rejects_a_matrix():
    with pytest.raises(ValueError, match="trace"):
        wl.windows(np.zeros((2, 3)), 1)


# ----------------------------------------------------------------------------------------
# Trace I/O.
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_trace():
    return wl.generate("qwen3-like", (3, 16, 4), 5, seed=4, return_meta=True)


def test_json_round_trip_with_meta(tmp_path, small_trace):
    trace, meta = small_trace
    path = tmp_path / "trace.json"
    wl.save_trace(path, trace, meta)
    doc = json.loads(path.read_text())
    assert len(doc["load_history"]) == 5
    assert np.array(doc["load_history"][0]["logical_expert_load"]).shape == (3, 16)
    assert doc["meta"]["profile"] == "qwen3-like"
    assert doc["meta"]["params"]["alpha0"] == wl.PROFILES["qwen3-like"].alpha0
    back = wl.load_trace(path)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, trace)


def test_npy_round_trip(tmp_path, small_trace):
    trace, _ = small_trace
    wl.save_trace(tmp_path / "t.npy", trace)
    np.testing.assert_array_equal(wl.load_trace(tmp_path / "t.npy"), trace)
    with pytest.raises(ValueError, match="meta"):
        wl.save_trace(tmp_path / "m.npy", trace, {"a": 1})


def test_pt_round_trip_is_an_sglang_dump(tmp_path, small_trace):
    torch = pytest.importorskip("torch")
    trace, meta = small_trace
    path = tmp_path / "dump.pt"
    wl.save_trace(path, trace, meta)
    doc = torch.load(path, weights_only=True)
    assert doc["rank"] == 0
    assert tuple(doc["logical_count"].shape) == trace.shape
    assert doc["meta"]["seed"] == 4
    np.testing.assert_array_equal(wl.load_trace(path), trace)


def test_loads_sglang_dumps_and_plain_tensors(tmp_path, small_trace):
    torch = pytest.importorskip("torch")
    trace, _ = small_trace
    t = torch.from_numpy(trace)
    torch.save(
        {"rank": 3, "logical_count": t, "average_utilization_rate_over_window": 0.5},
        tmp_path / "sglang.pt",
    )
    np.testing.assert_array_equal(wl.load_trace(tmp_path / "sglang.pt"), trace)
    torch.save(t.float(), tmp_path / "plain.pth")
    np.testing.assert_array_equal(wl.load_trace(tmp_path / "plain.pth"), trace)
    torch.save(t[0], tmp_path / "matrix.pt")
    np.testing.assert_array_equal(wl.load_trace(tmp_path / "matrix.pt"), trace[:1])
    torch.save({"other": t}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="logical_count"):
        wl.load_trace(tmp_path / "bad.pt")


def test_loads_real_matrix_json_and_sglang_json(tmp_path):
    counts = [[1.0, 2.0, 3.0], [0.0, 5.0, 1.0]]
    (tmp_path / "m.json").write_text(json.dumps({"counts": counts, "num_layers": 2}))
    got = wl.load_trace(tmp_path / "m.json")
    assert got.shape == (1, 2, 3) and got.dtype == np.int64
    np.testing.assert_array_equal(got[0], counts)
    (tmp_path / "f.json").write_text(json.dumps({"counts": [[0.5, 1.5]]}))
    assert wl.load_trace(tmp_path / "f.json").dtype == np.float64
    (tmp_path / "s.json").write_text(json.dumps({"logical_count": [counts, counts]}))
    assert wl.load_trace(tmp_path / "s.json").shape == (2, 2, 3)


def test_detects_the_format_from_the_content(tmp_path, small_trace):
    trace, _ = small_trace
    wl.save_trace(tmp_path / "t.json", trace)
    (tmp_path / "t.trace").write_bytes((tmp_path / "t.json").read_bytes())
    np.testing.assert_array_equal(wl.load_trace(tmp_path / "t.trace"), trace)
    np.save(tmp_path / "t.npy", trace)
    (tmp_path / "t.bin").write_bytes((tmp_path / "t.npy").read_bytes())
    np.testing.assert_array_equal(wl.load_trace(tmp_path / "t.bin"), trace)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"steps": []}, "unknown JSON trace"),
        ({"load_history": []}, "non-empty"),
        ({"load_history": [{"x": 1}]}, "logical_expert_load"),
        ({"load_history": [{"logical_expert_load": [1, 2]}]}, "shape"),
        ({"counts": [[1, -2]]}, ">= 0"),
        ({"counts": [[1, 2], [3]]}, "rectangular"),
    ],
)
def test_bad_json_traces_are_rejected(tmp_path, content, match):
    (tmp_path / "bad.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        wl.load_trace(tmp_path / "bad.json")


def test_unknown_formats_are_rejected(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="unknown trace format"):
        wl.load_trace(tmp_path / "x.bin")
    with pytest.raises(ValueError, match="unknown trace format"):
        wl.save_trace(tmp_path / "x.csv", np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="shape"):
        wl.save_trace(tmp_path / "x.json", np.zeros((1, 1, 2, 3)))
    with pytest.raises(TypeError, match="meta"):
        wl.save_trace(tmp_path / "x.json", np.zeros((1, 2, 3)), meta=[1])


# ----------------------------------------------------------------------------------------
# Argument checks.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        (("qwen4-like", "qwen3-235b", 1), {}, ValueError, "profile.*qwen3-like"),
        ((3, "qwen3-235b", 1), {}, TypeError, "profile"),
        (("qwen3-like", "qwen4", 1), {}, ValueError, "model.*deepseek-v3"),
        (("qwen3-like", 7, 1), {}, TypeError, "model"),
        (("qwen3-like", (0, 8), 1), {}, ValueError, "layers"),
        (("qwen3-like", "qwen3-235b", 0), {}, ValueError, "steps"),
        (("qwen3-like", "qwen3-235b", 1.5), {}, TypeError, "steps"),
        (("qwen3-like", "qwen3-235b", True), {}, TypeError, "steps"),
        (("qwen3-like", "qwen3-235b", 1), {"seed": -1}, ValueError, "seed"),
        (("qwen3-like", "qwen3-235b", 1), {"tokens_per_step": 0}, ValueError, "tokens_per_step"),
        (("qwen3-like", "qwen3-235b", 1), {"top_k": 0}, ValueError, "top_k"),
        (("qwen3-like", "qwen3-235b", 1), {"top_k": 129}, ValueError, "top_k.*1..128"),
        (("qwen3-like", "qwen3-235b", 1), {"traffic": "burst"}, ValueError, "traffic"),
        (("qwen3-like", "qwen3-235b", 1), {"traffic": 3}, TypeError, "traffic"),
    ],
)
def test_bad_generate_arguments_name_the_argument(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        wl.generate(*args, **kwargs)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"alpha0": 0.0}, "alpha0"),
        ({"rho_dom": 1.5}, "rho_dom"),
        ({"focus": -0.1}, "focus"),
        ({"m_hot": (0.5, 2.0)}, "m_hot"),
        ({"domains": 0}, "domains"),
        ({"traffic": "x"}, "traffic"),
    ],
)
def test_bad_profile_parameters_are_rejected(change, match):
    bad = dataclasses.replace(wl.PROFILES["qwen3-like"], **change)
    with pytest.raises(ValueError, match=match):
        wl.generate(bad, "qwen2-57b", 1)


def test_custom_profile_and_model_shape():
    prof = dataclasses.replace(wl.PROFILES["near-uniform"], domains=1, archetypes=1)
    trace = wl.generate(prof, wl.ModelShape(2, 10, 3), 4, tokens_per_step=50)
    assert trace.shape == (4, 2, 10)
    assert np.all(trace.sum(axis=2) == 150)


def test_bad_statistics_arguments():
    with pytest.raises(ValueError, match="trace"):
        wl.statistics(np.zeros(5))
    with pytest.raises(ValueError, match=">= 0"):
        wl.statistics(-np.ones((2, 4)))
    with pytest.raises(ValueError, match="window"):
        wl.statistics(np.ones((3, 2, 4)), window=0)
    with pytest.raises(ValueError, match="domain_popularity"):
        wl.statistics(np.ones((2, 4)), domain_popularity=np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="regime"):
        wl.statistics(np.ones((4, 2, 4)), corr_window=2, regime=np.zeros(3))


# ----------------------------------------------------------------------------------------
# statistics() on known inputs.
# ----------------------------------------------------------------------------------------


def test_statistics_of_a_uniform_matrix():
    s = wl.statistics(np.full((3, 32), 7.0), num_gpus_list=(4, 8, 5))
    assert s["matrices"] == 1
    assert s["expert_max_mean"] == pytest.approx(1.0)
    assert s["top_share"] == pytest.approx(3 / 32)
    assert s["cold_fraction"] == 0.0
    assert s["identity"][8] == pytest.approx(1.0)
    assert s["eplb"][4] == pytest.approx(1.0)
    assert s["identity"][5] is None  # 5 does not divide 32
    assert s["rank_corr_consecutive"] is None and s["cross_domain_rank_corr"] is None


def test_statistics_of_a_hand_computed_matrix():
    # One layer, 4 experts, 2 GPUs; identity placement loads 11 and 1.
    m = np.array([[10.0, 1.0, 1.0, 0.0]])
    s = wl.statistics(m, num_gpus_list=(2,))
    assert s["expert_max_mean"] == pytest.approx(10 / 3)
    assert s["cold_fraction"] == pytest.approx(0.25)  # 0 < 0.1 * 3
    assert s["top_share"] == pytest.approx(10 / 12)  # floor(0.4) -> at least one expert
    assert s["identity"][2] == pytest.approx(11 / 6)
    # 6 slots, 3 per GPU: the hot expert gets 3 replicas of 10/3; greedy packing gives
    # {10/3, 10/3, 0} and {10/3, 1, 1}.
    assert s["eplb"][2] == pytest.approx((20 / 3) / 6)


def test_statistics_windows_and_rank_correlation():
    rng = np.random.default_rng(0)
    base = rng.gamma(0.5, size=(2, 50)) * 1000
    steady = np.stack([base + rng.random((2, 50)) for _ in range(40)])
    s = wl.statistics(steady, window=10, corr_window=10)
    assert s["matrices"] == 4
    assert s["rank_corr_consecutive"] > 0.99
    shuffled = np.stack([rng.permuted(base, axis=1) for _ in range(40)])
    s = wl.statistics(shuffled, corr_window=10)
    assert abs(s["rank_corr_consecutive"]) < 0.5
    # Pairs that cross a regime boundary are left out.
    regime = np.repeat([0, 1], 20)
    s = wl.statistics(steady, corr_window=10, regime=regime)
    assert s["rank_corr_consecutive"] > 0.99
    s = wl.statistics(steady, corr_window=10, regime=np.arange(40))
    assert s["rank_corr_consecutive"] is None


def test_spearman_handles_ties_like_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4, size=(5, 30)).astype(float)
    b = rng.integers(0, 4, size=(5, 30)).astype(float)
    ours = _spearman(a, b)
    ref = [stats.spearmanr(x, y).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_cross_domain_correlation_follows_rho_dom():
    low = wl.domain_popularity("qwen3-like", "qwen3-235b")
    high = wl.domain_popularity("aux-loss-balanced", "qwen3-235b")
    s_low = wl.statistics(low.sum(axis=0), domain_popularity=low)["cross_domain_rank_corr"]
    s_high = wl.statistics(high.sum(axis=0), domain_popularity=high)["cross_domain_rank_corr"]
    assert s_low < 0.2 < 0.35 < s_high


# ----------------------------------------------------------------------------------------
# Real matrices (internal; skipped when absent).
# ----------------------------------------------------------------------------------------


@needs_real
def test_real_qwen3_235b_identity_imbalance():
    m = wl.load_trace(REAL / "qwen3-235b-a22b_counts235b.json")
    assert m.shape == (1, 94, 128)
    s = wl.statistics(m, num_gpus_list=(8, 16, 32))
    assert s["identity"][8] == pytest.approx(1.737, abs=1e-3)
    assert s["expert_max_mean"] == pytest.approx(10.9, abs=0.05)
    assert s["expert_max_mean_p10"] == pytest.approx(7.7, abs=0.05)
    assert s["expert_max_mean_p90"] == pytest.approx(13.75, abs=0.05)
    assert s["top_share"] == pytest.approx(0.51, abs=0.01)
    assert s["cold_fraction"] == pytest.approx(0.30, abs=0.01)
    assert s["identity"][16] == pytest.approx(2.44, abs=0.01)
    assert s["identity"][32] == pytest.approx(3.81, abs=0.01)
    assert s["eplb"][32] == pytest.approx(1.02, abs=0.005)


@needs_real
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("qwen2-57b-a14b_counts57b_L256.json", {8: 1.2177, 4: 1.1071, 2: 1.0210}),
        ("qwen2-57b-a14b_counts57b_sharegpt.json", {8: 1.2040, 4: 1.0965}),
    ],
)
def test_real_qwen2_57b_identity_imbalance(name, expected):
    s = wl.statistics(wl.load_trace(REAL / name), num_gpus_list=tuple(expected))
    for g, value in expected.items():
        assert s["identity"][g] == pytest.approx(value, abs=5e-5)


@needs_real
def test_qwen3_like_is_close_to_the_real_qwen3_matrices():
    synth = _stats("qwen3-like", "qwen3-235b", 400, 100, (8, 16, 32), seed=1)
    for name in ("qwen3-235b-a22b_counts235b.json", "qwen3-30b-a3b_counts30b.json"):
        real = wl.statistics(wl.load_trace(REAL / name), num_gpus_list=(8, 16, 32))
        assert synth["expert_max_mean"] == pytest.approx(real["expert_max_mean"], rel=0.2)
        assert synth["top_share"] == pytest.approx(real["top_share"], abs=0.06)
        assert synth["cold_fraction"] == pytest.approx(real["cold_fraction"], abs=0.08)
        for g in (8, 16, 32):
            assert synth["identity"][g] == pytest.approx(real["identity"][g], rel=0.15)
