"""fasteplb.integrations.sglang, and fasteplb.rebalance_experts(enable_hierarchical=).

SGLang itself is never installed. The plugin runs in a subprocess against an ``sglang``
package laid out in tmp_path: SGLang 0.5.23's own plugin loader, hook registry, algorithm
dispatcher and DeepSeek planners when the wheel is in the peer cache
(``fasteplb._bench.peers.fetch()``), a small stand-in otherwise, with fasteplb's entry point
declared in a dist-info written from pyproject.toml. SGLang's ``--init-expert-location``
loader and its recorder's dump code run in-process, extracted alone from the cached files by
``fasteplb._bench.peers.definition``; those tests skip without the cache. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import types

import fasteplb
import numpy as np
import pytest
from fasteplb import reference
from fasteplb._bench import peers as _peers
from fasteplb.integrations import sglang as fs
from helpers import write_tree

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALGOS = "sglang/srt/eplb/eplb_algorithms/"


def sglang_root():
    try:
        return pathlib.Path(_peers.engine_files("sglang", download=False))
    except _peers.PeerUnavailable as exc:
        pytest.skip(f"SGLang 0.5.23 wheel not cached ({exc}); run fasteplb._bench.peers.fetch()")


def lognormal(seed, shape):
    return np.random.default_rng(seed).lognormal(0.0, 1.5, shape)


# --------------------------------------------------------------------------- enable_hierarchical


@pytest.mark.parametrize("impl", [fasteplb, reference])
def test_enable_hierarchical(impl):
    w = lognormal(0, (3, 16))
    plan = lambda *a, **k: impl.rebalance_experts(w, *a, refine="none", **k)
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(a, b))
    assert same(plan(24, 4, 2, 8, enable_hierarchical=False), plan(24, 1, 1, 8))
    assert same(plan(24, 4, 2, 8, enable_hierarchical=True), plan(24, 4, 2, 8))
    assert same(plan(24, 4, 2, 8, enable_hierarchical=None), plan(24, 4, 2, 8))
    # False ignores the grouping, as SGLang does: even one that does not divide the experts.
    assert same(plan(24, 3, 5, 8, enable_hierarchical=False), plan(24, 1, 1, 8))
    with pytest.raises(ValueError, match=r"enable_hierarchical=True needs num_groups \(3\)"):
        impl.rebalance_experts(w[:, :12], 24, 3, 2, 8, enable_hierarchical=True)
    with pytest.raises(TypeError, match="enable_hierarchical must be a bool or None, got int"):
        plan(24, 4, 2, 8, enable_hierarchical=1)


def test_enable_hierarchical_matches_sglangs_deepseek():
    sglang_root()
    torch = pytest.importorskip("torch")
    raw = _peers.load("sglang", download=False).raw  # SGLang's deepseek.rebalance_experts
    for seed in range(3):
        w = torch.from_numpy(lognormal(seed, (4, 32)))
        for hier in (True, False):
            want = raw(w, 48, 8, 2, 8, enable_hierarchical=hier)
            got = fasteplb.rebalance_experts(
                w, 48, 8, 2, 8, refine="none", enable_hierarchical=hier
            )
            assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])


# --------------------------------------------------------------------------- the adapter


def test_rebalance_experts_contract():
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(np.random.default_rng(1).integers(0, 300, (5, 4, 16)))
    phy2log, log2phy, logcnt = fs.rebalance_experts(t, 24, 3, 4, 2)
    want = fasteplb.rebalance_experts(t.sum(0), 24, 4, 2, 8)
    for got, exp in zip((phy2log, log2phy, logcnt), want):
        assert isinstance(got, torch.Tensor) and got.dtype == torch.int64
        assert torch.equal(got, exp)
    # [L, E] input, numpy in -> numpy out, None groups = one group, the switch.
    a = fs.rebalance_experts(t.sum(0).numpy(), 24, 3, None, 1, enable_hierarchical=False)
    assert isinstance(a[0], np.ndarray)
    assert np.array_equal(a[0], fasteplb.rebalance_experts(t.sum(0).numpy(), 24, 1, 1, 8)[0])
    old = phy2log
    got = fs.rebalance_experts(t[:2], 24, 3, 4, 2, old_phy2log=old)[0]
    exp = fasteplb.rebalance_experts(t[:2].sum(0), 24, 4, 2, 8, old_phy2log=old)[0]
    assert torch.equal(got, exp)
    with pytest.raises(ValueError, match=r"divisible by num_local_physical_experts \(5\)"):
        fs.rebalance_experts(t, 24, 5, 4, 2)
    with pytest.raises(ValueError, match=r"\[T, layers, experts\] or \[layers, experts\]"):
        fs.rebalance_experts(t[0, 0], 24, 3, 4, 2)
    with pytest.raises(TypeError, match="num_local_physical_experts must be an integer"):
        fs.rebalance_experts(t, 24, 3.0, 4, 2)


# --------------------------------------------------------------------------- the plugin


def entry_points(group):
    text = (ROOT / "pyproject.toml").read_text()
    section = re.search(
        r'^\[project\.entry-points\."' + re.escape(group) + r'"\]\n(.*?)(?=^\[|\Z)',
        text,
        re.M | re.S,
    )
    assert section, f"pyproject.toml declares no {group} entry points"
    return dict(re.findall(r'^(\S+)\s*=\s*"([^"]+)"', section.group(1), re.M))


def write_dist_info(site, group):
    info = site / "fasteplb_plugin_test-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fasteplb-plugin-test\nVersion: 0.0\n"
    )
    lines = [f"[{group}]"] + [f"{k} = {v}" for k, v in entry_points(group).items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


COMMON = {
    "sglang/__init__.py": "",
    "sglang/srt/__init__.py": "",
    "sglang/srt/eplb/__init__.py": "",
    "sglang/srt/environ.py": """
        import os


        class _Var:
            def __init__(self, name):
                self.name = name

            def get(self):
                return os.environ.get(self.name, "")


        class envs:
            SGLANG_PLUGINS = _Var("SGLANG_PLUGINS")
            SGLANG_PLATFORM = _Var("SGLANG_PLATFORM")
    """,
    # The live placement: the probe sets METADATA as SGLang's runtime would.
    "sglang/srt/eplb/expert_location.py": """
        METADATA = None


        def get_global_expert_location_metadata():
            return METADATA
    """,
}

STANDIN = {
    **COMMON,
    "sglang/srt/plugins/__init__.py": """
        from importlib.metadata import entry_points

        from sglang.srt.environ import envs

        _plugins_loaded = False


        def load_plugins():
            global _plugins_loaded
            if _plugins_loaded:
                return
            _plugins_loaded = True
            allowed = {x for x in envs.SGLANG_PLUGINS.get().split(",") if x}
            for ep in entry_points(group="sglang.srt.plugins"):
                if not allowed or ep.name in allowed:
                    ep.load()()
    """,
    ALGOS + "__init__.py": """
        from enum import Enum, auto

        from sglang.srt.eplb.eplb_algorithms import deepseek, deepseek_vec


        class EplbAlgorithm(Enum):
            deepseek = auto()
            deepseek_hierarchical = auto()
            deepseek_vec = auto()
            deepseek_vec_hierarchical = auto()


        def rebalance_experts(tokens_per_expert, num_physical_experts,
                              num_local_physical_experts, num_groups, num_nodes, algorithm):
            if algorithm in (EplbAlgorithm.deepseek, EplbAlgorithm.deepseek_hierarchical):
                raise AssertionError("the stand-in deepseek must not be called")
            return deepseek_vec.rebalance_experts(
                tokens_per_expert=tokens_per_expert,
                num_physical_experts=num_physical_experts,
                num_local_physical_experts=num_local_physical_experts,
                num_groups=num_groups, num_nodes=num_nodes,
                enable_hierarchical=algorithm == EplbAlgorithm.deepseek_vec_hierarchical,
            )


        def compute_algorithm(raw_algorithm, num_groups, num_nodes):
            if raw_algorithm != "auto":
                return EplbAlgorithm[raw_algorithm]
            if num_groups is not None and num_groups % num_nodes == 0:
                return EplbAlgorithm.deepseek_hierarchical
            return EplbAlgorithm.deepseek
    """,
    ALGOS + "deepseek.py": "",
    ALGOS + "deepseek_vec.py": """
        import torch


        def rebalance_experts(tokens_per_expert, num_physical_experts,
                              num_local_physical_experts, num_groups, num_nodes,
                              enable_hierarchical):
            _, layers, experts = tokens_per_expert.shape
            phy2log = (torch.arange(num_physical_experts) % experts).repeat(layers, 1)
            return phy2log, None, None
    """,
}

# SGLang 0.5.23's own files used in the "wheel" site.
REAL = [
    "sglang/srt/plugins/__init__.py",
    "sglang/srt/plugins/hook_registry.py",
    ALGOS + "__init__.py",
    ALGOS + "deepseek.py",
    ALGOS + "deepseek_vec.py",
    ALGOS + "elasticity_aware.py",
]


def make_site(tmp_path, source):
    site = tmp_path / "site"
    if source == "standin":
        write_tree(site, STANDIN)
    else:
        root = sglang_root()
        write_tree(site, COMMON)
        for member in REAL:
            (site / member).parent.mkdir(parents=True, exist_ok=True)
            (site / member).write_bytes((root / member).read_bytes())
    write_dist_info(site, "sglang.srt.plugins")
    return site


PROBE = """
import json, sys, types
import numpy as np
import torch
from sglang.srt.plugins import load_plugins
from sglang.srt.eplb import eplb_algorithms as A, expert_location

args = json.loads(sys.argv[1])
t = torch.from_numpy(np.load(args["load"]))
P, k, G, N = args["sizes"]
load_plugins()
load_plugins()
out = {"routed": getattr(A.rebalance_experts, "_fasteplb", False)}
def plan(algorithm):
    phy2log, log2phy, logcnt = A.rebalance_experts(
        tokens_per_expert=t, num_physical_experts=P, num_local_physical_experts=k,
        num_groups=G, num_nodes=N, algorithm=algorithm)
    return phy2log.tolist()
for name in ("deepseek", "deepseek_hierarchical", "auto", "deepseek_vec"):
    out[name] = plan(A.compute_algorithm(name, G, N))
# SGLang's live placement, as its runtime holds it: the next rebalance plans from it.
old = torch.tensor(out["deepseek_hierarchical"])
expert_location.METADATA = types.SimpleNamespace(physical_to_logical_map_cpu=old)
out["migrated"] = plan(A.EplbAlgorithm.deepseek_hierarchical)
vec = A.deepseek_vec.rebalance_experts(
    tokens_per_expert=t, num_physical_experts=P, num_local_physical_experts=k,
    num_groups=G, num_nodes=N, enable_hierarchical=False)
out["vec_direct"] = vec[0].tolist()
print(json.dumps(out))
"""


def run_probe(tmp_path, site, load, sizes, **env):
    np.save(tmp_path / "load.npy", load)
    environ = {k: v for k, v in os.environ.items() if k not in ("SGLANG_PLUGINS", fs.ENV)}
    environ["PYTHONPATH"] = os.pathsep.join([str(site), *sys.path])
    environ.update(env)
    arg = json.dumps({"load": str(tmp_path / "load.npy"), "sizes": list(sizes)})
    return subprocess.run(
        [sys.executable, "-c", PROBE, arg], capture_output=True, text=True, env=environ,
        timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("source", ["standin", "wheel"])
def test_entry_point_routes_sglangs_deepseek_algorithms(tmp_path, source):
    pytest.importorskip("torch")
    site = make_site(tmp_path, source)
    load = np.random.default_rng(2).integers(0, 500, (3, 4, 16))
    sizes = (24, 3, 4, 2)  # 8 GPUs, 4 groups, 2 nodes
    done = run_probe(tmp_path, site, load, sizes, FASTEPLB_SGLANG="1")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["routed"]
    w = load.sum(0)
    hier = fasteplb.rebalance_experts(w, 24, 4, 2, 8)[0]
    flat = fasteplb.rebalance_experts(w, 24, 4, 2, 8, enable_hierarchical=False)[0]
    assert not np.array_equal(hier, flat)  # the switch matters for these loads
    assert out["deepseek"] == flat.tolist()
    assert out["deepseek_hierarchical"] == out["auto"] == hier.tolist()
    assert (
        out["migrated"] == fasteplb.rebalance_experts(w, 24, 4, 2, 8, old_phy2log=hier)[0].tolist()
    )
    assert out["deepseek_vec"] == out["vec_direct"]  # not routed: SGLang's own


@pytest.mark.parametrize("env", [{}, {"FASTEPLB_SGLANG": "1", "SGLANG_PLUGINS": "other"}])
def test_entry_point_does_nothing_unless_asked(tmp_path, env):
    pytest.importorskip("torch")
    site = make_site(tmp_path, "standin")
    done = run_probe(tmp_path, site, np.ones((1, 2, 8), dtype=np.int64), (8, 2, 1, 1), **env)
    # The stand-in's own deepseek raises: reaching it means fasteplb did not route.
    assert "the stand-in deepseek must not be called" in done.stderr
    assert done.returncode != 0


def test_register_validates_options_and_unregister_restores(monkeypatch):
    module = types.ModuleType("sglang.srt.eplb.eplb_algorithms")
    original = lambda **kw: ("sglang's", kw["algorithm"])
    module.rebalance_experts = original
    monkeypatch.setitem(sys.modules, "sglang.srt.eplb.eplb_algorithms", module)
    fs.register(migration=False, refine="none")
    fs.register(migration=False, refine="none")  # idempotent: wraps SGLang's function once
    routed = module.rebalance_experts
    assert routed.__wrapped__ is original
    algo = types.SimpleNamespace(name="deepseek_vec")
    assert routed(np.ones((1, 2, 4)), 4, 1, 1, 1, algo) == ("sglang's", algo)
    w = lognormal(3, (2, 8))
    got = routed(w[None], 16, 2, 2, 2, types.SimpleNamespace(name="deepseek"))[0]
    assert np.array_equal(got, fasteplb.rebalance_experts(w, 16, 1, 1, 8, refine="none")[0])
    fs.unregister()
    assert module.rebalance_experts is original
    with pytest.raises(TypeError, match="unknown option"):
        fs.register(windows=3)
    monkeypatch.setenv(fs.ENV, "2")
    with pytest.raises(ValueError, match="FASTEPLB_SGLANG must be 1"):
        fs.plugin()


# --------------------------------------------------------------------------- --init-expert-location


def sglang_loader(path):
    """SGLang's compute_initial_expert_location_metadata, run on ``path``; returns what it
    passes to ExpertLocationMetadata.init_by_mapping."""
    torch = pytest.importorskip("torch")
    root = sglang_root()
    calls = []

    class ExpertLocationMetadata:
        @staticmethod
        def init_by_mapping(model_config, physical_to_logical_map, moe_ep_rank=None):
            if not isinstance(physical_to_logical_map, torch.Tensor):  # as the real one
                physical_to_logical_map = torch.tensor(physical_to_logical_map)
            calls.append(physical_to_logical_map)
            return "metadata"

        @staticmethod
        def init_by_eplb(model_config, logical_count):
            raise AssertionError("a physical_to_logical_map file is not planned again")

    moe = types.SimpleNamespace(init_expert_location=str(path))
    load = _peers.definition(
        str(root / "sglang/srt/eplb/expert_location.py"),
        "compute_initial_expert_location_metadata",
        {
            "torch": torch, "json": json, "Path": pathlib.Path,
            "logger": types.SimpleNamespace(info=lambda *a: None),
            "get_exec": lambda: types.SimpleNamespace(moe=moe),
            "ExpertLocationMetadata": ExpertLocationMetadata,
        },
    )  # fmt: skip
    assert load(model_config=None, moe_ep_rank=0) == "metadata"
    return calls[0]


@pytest.mark.parametrize("suffix", [".json", ".pt"])
def test_init_expert_location_file_is_what_sglang_reads(tmp_path, suffix):
    torch = pytest.importorskip("torch")
    w = lognormal(4, (3, 16))
    phy2log, log2phy, logcnt = fasteplb.rebalance_experts(w, 24, 4, 2, 8)
    path = tmp_path / f"init{suffix}"
    fs.save_init_expert_location(path, torch.from_numpy(phy2log))
    got = sglang_loader(path)
    assert got.dtype == torch.int64 and np.array_equal(got.numpy(), phy2log)
    # SGLang's own log2phy construction from the map (moe_ep_rank None: all replicas).
    root = sglang_root()
    src = str(root / "sglang/srt/eplb/expert_location.py")
    pad = _peers.definition(src, "_pad_nested_array", {})
    logical_to_all = _peers.definition(
        src, "_compute_logical_to_all_physical_map", {"torch": torch, "_pad_nested_array": pad}
    )
    mapped = logical_to_all(got, num_logical_experts=16, ep_size=8, moe_ep_rank=None)
    by_slot = lambda x: np.sort(np.where(x < 0, 1 << 40, x), axis=-1)
    assert mapped.shape == log2phy.shape  # replicas in slot order there, by rank here
    assert np.array_equal(by_slot(mapped.numpy()), by_slot(log2phy))


def test_init_expert_location_format_without_sglang(tmp_path):
    phy2log = fasteplb.rebalance_experts(lognormal(5, (2, 8)), 16, 1, 1, 4)[0]
    fs.save_init_expert_location(tmp_path / "a.json", phy2log.astype(np.int32))
    doc = json.loads((tmp_path / "a.json").read_text())
    # Exactly the one key: SGLang passes the dict's keys to init_by_mapping as arguments.
    assert doc == {"physical_to_logical_map": phy2log.tolist()}
    with pytest.raises(ValueError, match=r"must end in \.json or \.pt"):
        fs.save_init_expert_location(tmp_path / "a.JSON", phy2log)
    with pytest.raises(ValueError, match=">= 0"):
        fs.save_init_expert_location(tmp_path / "b.json", -phy2log - 1)
    with pytest.raises(TypeError, match="integers"):
        fs.save_init_expert_location(tmp_path / "b.json", phy2log * 0.5)
    with pytest.raises(ValueError, match=r"\[layers, slots\]"):
        fs.save_init_expert_location(tmp_path / "b.json", phy2log[0])
    assert not (tmp_path / "b.json").exists()


# --------------------------------------------------------------------------- recorder dumps


class _TorchWithoutCollectives:
    """torch, with the single-process stand-ins a recorder dump needs outside SGLang."""

    def __init__(self, torch):
        self._torch = torch
        self.distributed = types.SimpleNamespace(
            all_reduce=lambda tensor, op=None: None, ReduceOp=torch.distributed.ReduceOp
        )

    def __getattr__(self, name):
        return getattr(self._torch, name)


def sglang_dumpers(tmp_path):
    """SGLang's _StatAccumulator.dump / _DetailAccumulator.dump, writing into tmp_path."""
    torch = pytest.importorskip("torch")
    src = str(sglang_root() / "sglang/srt/eplb/expert_distribution.py")
    envs = types.SimpleNamespace(
        SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR=types.SimpleNamespace(get=lambda: str(tmp_path))
    )
    base = {"torch": _TorchWithoutCollectives(torch), "time": __import__("time")}
    to_file = _peers.definition(
        src, "_dump_to_file",
        {**base, "Path": pathlib.Path, "envs": envs,
         "logger": types.SimpleNamespace(info=lambda *a: None)},
    )  # fmt: skip
    convert = _peers.definition(src, "_convert_global_physical_count_to_logical_count", base)
    stat = _peers.definition(
        src, "_StatAccumulator.dump",
        {**base, "_dump_to_file": to_file,
         "_convert_global_physical_count_to_logical_count": convert},
    )  # fmt: skip
    detail = _peers.definition(src, "_DetailAccumulator.dump", {**base, "_dump_to_file": to_file})
    return stat, detail


def accumulator(phy2log, rank=0, **fields):
    torch = pytest.importorskip("torch")
    meta = types.SimpleNamespace(
        num_layers=phy2log.shape[0],
        num_logical_experts=int(phy2log.max()) + 1,
        physical_to_logical_map=torch.from_numpy(phy2log),
    )
    return types.SimpleNamespace(
        _expert_location_metadata=meta, _rank=rank, _first_dump=False,
        _get_global_average_utilization_rate=lambda: 0.5, **fields,
    )  # fmt: skip


def physical_counts(seed, steps, phy2log):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 50, (steps, *phy2log.shape)).astype(np.int32)


def logical(counts, phy2log, experts):
    out = np.zeros((counts.shape[0], phy2log.shape[0], experts), dtype=np.int64)
    for t in range(counts.shape[0]):
        for layer in range(phy2log.shape[0]):
            np.add.at(out[t, layer], phy2log[layer], counts[t, layer])
    return out


def test_stat_dump_written_by_sglangs_code(tmp_path):
    torch = pytest.importorskip("torch")
    stat, _ = sglang_dumpers(tmp_path)
    phy2log = fasteplb.rebalance_experts(lognormal(6, (3, 16)), 24, 1, 1, 8)[0]
    counts = physical_counts(7, 5, phy2log)
    buffer = types.SimpleNamespace(get_all=lambda: torch.from_numpy(counts))
    stat(accumulator(phy2log, _global_physical_count_of_buffered_step=buffer), "file")
    (path,) = tmp_path.glob("expert_distribution_recorder_*.pt")
    got = fs.load_recorder_dump(path)
    assert got["mode"] == "stat" and got["rank"] == 0
    assert got["average_utilization_rate_over_window"] == 0.5
    assert got["logical_count"].dtype == np.int64
    assert np.array_equal(got["logical_count"], logical(counts, phy2log, 16))
    assert np.array_equal(fs.load_recorder_dump(tmp_path)["logical_count"], got["logical_count"])
    assert "physical_to_logical_map" not in got


def test_detail_dumps_written_by_sglangs_code(tmp_path):
    torch = pytest.importorskip("torch")
    _, detail = sglang_dumpers(tmp_path)
    phy2log = fasteplb.rebalance_experts(lognormal(8, (2, 8)), 16, 1, 1, 4)[0]
    per_rank = {}
    for rank in (1, 0):  # each rank dumps its own file
        counts = physical_counts(10 + rank, 3, phy2log)
        per_rank[rank] = counts
        # What _DetailAccumulator.append stores for the select-experts gatherer.
        records = [
            dict(forward_pass_id=fp, rank=rank, gatherer_key="primary",
                 global_physical_count=torch.from_numpy(counts[i]))
            for i, fp in enumerate((7, 5, 6))
        ]  # fmt: skip
        detail(accumulator(phy2log, rank, _records=records), "file")
    assert len(list(tmp_path.glob("expert_distribution_recorder_*.pt"))) == 2
    got = fs.load_recorder_dump(tmp_path)
    assert got["mode"] == "detail" and sorted(got["records"]) == [0, 1]
    assert [r["forward_pass_id"] for r in got["records"][1]] == [5, 6, 7]
    assert isinstance(got["records"][0][0]["global_physical_count"], np.ndarray)
    assert np.array_equal(got["physical_to_logical_map"], phy2log)
    assert got["forward_pass_ids"].tolist() == [5, 6, 7]
    order = [1, 2, 0]  # passes 5, 6, 7
    summed = (per_rank[0] + per_rank[1]).astype(np.int64)[order]
    assert np.array_equal(got["physical_count"], summed)
    assert np.array_equal(got["logical_count"], logical(summed, phy2log, 8))


def test_dumps_in_the_documented_format_without_sglang(tmp_path):
    torch = pytest.importorskip("torch")
    counts = torch.randint(0, 9, (4, 2, 8), dtype=torch.int32)
    torch.save({"rank": 0, "logical_count": counts, "average_utilization_rate_over_window": None},
               tmp_path / "s.pt")  # fmt: skip
    got = fs.load_recorder_dump(tmp_path / "s.pt")
    assert np.array_equal(got["logical_count"], counts.numpy())
    assert got["average_utilization_rate_over_window"] is None
    # A plan straight from the dump, as `fasteplb plan` does.
    plan = fs.rebalance_experts(got["logical_count"], 16, 2, 1, 1)[0]
    assert plan.shape == (2, 16)
    phy2log = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    torch.save({"records": [dict(forward_pass_id=0, rank=0, gatherer_key="primary",
                                 global_physical_count=torch.ones(2, 4, dtype=torch.int32))],
                "last_physical_to_logical_map": phy2log}, tmp_path / "d.pt")  # fmt: skip
    got = fs.load_recorder_dump(tmp_path / "d.pt")
    assert got["logical_count"].tolist() == [[[1, 1, 1, 1], [1, 1, 1, 1]]]
    with pytest.raises(ValueError, match="stat and detail dumps"):
        os.rename(tmp_path / "s.pt", tmp_path / "expert_distribution_recorder_1.pt")
        os.rename(tmp_path / "d.pt", tmp_path / "expert_distribution_recorder_2_0.pt")
        fs.load_recorder_dump(tmp_path)
    torch.save({"something": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an SGLang recorder dump"):
        fs.load_recorder_dump(tmp_path / "x.pt")
    (tmp_path / "y.pt").write_text("not torch")
    with pytest.raises(ValueError, match=r"not a torch\.save file"):
        fs.load_recorder_dump(tmp_path / "y.pt")
    with pytest.raises(FileNotFoundError):
        fs.load_recorder_dump(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="no expert_distribution_recorder_"):
        (tmp_path / "empty").mkdir()
        fs.load_recorder_dump(tmp_path / "empty")


# --------------------------------------------------------------------------- the README


def test_readme_serving_engines_section_runs(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Serving engines\n(.*?)^## ", text, re.M | re.S)
    assert section, "README lost its Serving engines section"
    blocks = re.findall(r"```(\w+)\n(.*?)```", section.group(1), re.S)
    bash = [code for lang, code in blocks if lang == "bash"]
    assert bash[0].strip().splitlines() == ["pip install fasteplb", "export FASTEPLB_VLLM=1"]
    python = [code for lang, code in blocks if lang == "python"]
    assert len(python) == 2
    # A DeepSeek-V3-sized stat dump where the SGLang block expects it.
    counts = torch.from_numpy(np.random.default_rng(9).integers(0, 400, (3, 58, 256)))
    monkeypatch.chdir(tmp_path)
    torch.save(
        {"rank": 0, "logical_count": counts, "average_utilization_rate_over_window": None},
        "expert_distribution_recorder_1700000000.0.pt",
    )
    scope: dict = {}
    for code in python:
        exec(compile(code, "README", "exec"), scope)
    doc = json.loads((tmp_path / "init_expert_location.json").read_text())
    want = fasteplb.rebalance_experts(counts.sum(0), 288, 8, 4, 32)[0]
    assert doc == {"physical_to_logical_map": want.tolist()}
    config = scope["config"]
    assert sorted(config["initial_global_assignments"]) == list(range(3, 61))
    assert (tmp_path / "eplb.yaml").read_text().startswith("initial_global_assignments:\n  3: [")
    assert scope["count"].shape == (58, 256) and scope["slot_ids"].shape == (58, 288)
