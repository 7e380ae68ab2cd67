"""fasteplb.integrations.vllm: fasteplb as vLLM's EPLB policy.

vLLM itself is never installed. The plugin mechanics run in a subprocess against a ``vllm``
package laid out in tmp_path: vLLM 0.33's own files (policy registry, abstract policy, plugin
loader, envs) when the wheel is in the peer cache (``fasteplb._bench.peers.fetch()``), a small
stand-in otherwise, and fasteplb's entry point declared in a dist-info written from
pyproject.toml, so that vLLM's loader discovers it through importlib.metadata as it does in
a deployment. vLLM's callers of the policy (``run_rebalance_experts``, ``compute_logical_maps``,
``_commit_eplb_maps``) run in-process, extracted alone from the cached files by
``fasteplb._bench.peers.definition``; those tests skip without the cache. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import types

import fasteplb
import numpy as np
import pytest
from fasteplb._bench import peers as _peers
from fasteplb.integrations import _common
from fasteplb.integrations import vllm as fv
from helpers import write_tree

torch = pytest.importorskip("torch")  # vLLM's contract is torch tensors

ROOT = pathlib.Path(__file__).resolve().parents[1]
POLICY = "vllm/distributed/eplb/policy/"


def vllm_root():
    try:
        return pathlib.Path(_peers.engine_files("vllm", download=False))
    except _peers.PeerUnavailable as exc:
        pytest.skip(f"vLLM 0.33.0 wheel not cached ({exc}); run fasteplb._bench.peers.fetch()")


def entry_points(group):
    """fasteplb's entry points of ``group``, as pyproject.toml declares them."""
    text = (ROOT / "pyproject.toml").read_text()
    section = re.search(
        r'^\[project\.entry-points\."' + re.escape(group) + r'"\]\n(.*?)(?=^\[|\Z)',
        text,
        re.M | re.S,
    )
    assert section, f"pyproject.toml declares no {group} entry points"
    return dict(re.findall(r'^(\S+)\s*=\s*"([^"]+)"', section.group(1), re.M))


def write_dist_info(site, group):
    """A dist-info under site declaring fasteplb's ``group`` entry points, so that
    importlib.metadata finds them whether or not the installed fasteplb's metadata does."""
    info = site / "fasteplb_plugin_test-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fasteplb-plugin-test\nVersion: 0.0\n"
    )
    lines = [f"[{group}]"] + [f"{k} = {v}" for k, v in entry_points(group).items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def source_of(path, name):
    """The source text of a module-level assignment (e.g. EPLBPolicyOption)."""
    import ast

    text = pathlib.Path(path).read_text()
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.get_source_segment(text, node)
    raise LookupError(name)


STANDIN = {
    "vllm/__init__.py": "",
    "vllm/envs.py": """
        import os

        VLLM_PLUGINS = os.environ["VLLM_PLUGINS"].split(",") if "VLLM_PLUGINS" in os.environ else None
    """,
    "vllm/plugins/__init__.py": """
        from importlib.metadata import entry_points

        import vllm.envs as envs

        plugins_loaded = False


        def load_general_plugins():
            global plugins_loaded
            if plugins_loaded:
                return
            plugins_loaded = True
            for ep in entry_points(group="vllm.general_plugins"):
                if envs.VLLM_PLUGINS is None or ep.name in envs.VLLM_PLUGINS:
                    ep.load()()
    """,
    "vllm/distributed/__init__.py": "",
    "vllm/distributed/eplb/__init__.py": "",
    POLICY + "__init__.py": """
        from .abstract import AbstractEplbPolicy
        from .default import DefaultEplbPolicy

        EPLB_POLICIES = {"default": DefaultEplbPolicy}
    """,
    POLICY + "abstract.py": """
        from abc import ABC, abstractmethod


        class AbstractEplbPolicy(ABC):
            @classmethod
            @abstractmethod
            def rebalance_experts(
                cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                old_global_expert_indices=None,
            ):
                raise NotImplementedError
    """,
    POLICY + "default.py": """
        from .abstract import AbstractEplbPolicy


        class DefaultEplbPolicy(AbstractEplbPolicy):
            @classmethod
            def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                                  old_global_expert_indices=None):
                raise AssertionError("the stand-in default policy must not be called")
    """,
}

# vLLM 0.33's own files used in the "wheel" site; the rest are stand-ins (vllm/__init__.py
# and vllm/distributed/__init__.py would import all of vLLM).
REAL = [
    "vllm/envs.py",
    "vllm/plugins/__init__.py",
    "vllm/distributed/eplb/__init__.py",
    POLICY + "__init__.py",
    POLICY + "abstract.py",
    POLICY + "default.py",
]


def make_site(tmp_path, source):
    site = tmp_path / "site"
    if source == "standin":
        write_tree(site, STANDIN)
    else:
        root = vllm_root()
        files = {k: v for k, v in STANDIN.items() if k not in REAL}
        files["vllm/config/__init__.py"] = ""
        files["vllm/config/parallel.py"] = "from typing import Literal\n\n" + source_of(
            root / "vllm/config/parallel.py", "EPLBPolicyOption"
        )
        write_tree(site, files)
        for member in REAL:
            (site / member).parent.mkdir(parents=True, exist_ok=True)
            (site / member).write_bytes((root / member).read_bytes())
    write_dist_info(site, "vllm.general_plugins")
    return site


PROBE = """
import json, sys
from vllm.distributed.eplb import policy
from vllm.plugins import load_general_plugins

before = policy.EPLB_POLICIES["default"]
load_general_plugins()
load_general_plugins()  # vLLM may call it again: nothing changes
cls = policy.EPLB_POLICIES["default"]
out = {"before": before.__name__, "after": cls.__name__, "module": cls.__module__,
       "subclass": issubclass(cls, policy.AbstractEplbPolicy), "keys": sorted(policy.EPLB_POLICIES)}
if cls is not before:
    import torch
    w = torch.arange(32, dtype=torch.int32).reshape(2, 16)
    res = cls.rebalance_experts(w, 24, 4, 2, 8, None)
    inst = cls().rebalance_experts(w, 24, 4, 2, 8)  # an instance-based registry
    out.update(dtype=str(res.dtype), device=str(res.device), shape=list(res.shape),
               plan=res.tolist(), same=bool(torch.equal(res, inst)))
print(json.dumps(out))
"""


def run_probe(site, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLUGINS", fv.ENV)}
    environ["PYTHONPATH"] = os.pathsep.join([str(site), *sys.path])
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=environ, timeout=120
    )


@pytest.mark.parametrize("source", ["standin", "wheel"])
def test_entry_point_installs_the_policy_in_vllms_registry(tmp_path, source):
    site = make_site(tmp_path, source)
    done = run_probe(site, FASTEPLB_VLLM="1")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["before"] == "DefaultEplbPolicy"
    assert out["after"] == "FastEplbPolicy" and out["module"] == "fasteplb.integrations.vllm"
    assert out["subclass"] and out["keys"] == ["default"]  # vLLM accepts no other name
    assert out["dtype"] == "torch.int64" and out["device"] == "cpu" and out["shape"] == [2, 24]
    w = np.arange(32).reshape(2, 16)
    assert out["plan"] == fasteplb.rebalance_experts(w, 24, 4, 2, 8)[0].tolist()
    assert out["same"]


@pytest.mark.parametrize(
    "env",
    [{}, {"FASTEPLB_VLLM": "0"}, {"FASTEPLB_VLLM": "1", "VLLM_PLUGINS": "someone_else"}],
)
def test_entry_point_does_nothing_unless_asked(tmp_path, env):
    done = run_probe(make_site(tmp_path, "standin"), **env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["after"] == "DefaultEplbPolicy"


def test_allowlisted_plugin_and_bad_switch(tmp_path):
    site = make_site(tmp_path, "standin")
    done = run_probe(site, FASTEPLB_VLLM="yes", VLLM_PLUGINS="fasteplb,other")
    assert json.loads(done.stdout)["after"] == "FastEplbPolicy"
    done = run_probe(site, FASTEPLB_VLLM="maybe")
    assert done.returncode != 0
    assert "environment variable FASTEPLB_VLLM must be 1 (on) or 0 (off), got 'maybe'" in (
        done.stderr
    )


def test_register_and_unregister_a_registry():
    registry = {"default": object}
    cls = fv.register(registry, max_moves=4)
    assert registry["default"] is cls and cls.options == {"max_moves": 4}
    assert fv.register(registry) is cls and cls.options == {}
    fv.unregister()
    assert registry["default"] is object
    with pytest.raises(TypeError, match="unknown option"):
        fv.register(registry, refine_mode="local")
    with pytest.raises(ValueError, match="refine must be one of"):
        fv.register(registry, refine="fast")
    with pytest.raises(ValueError, match="need migration-aware planning"):
        fv.register(registry, refine="swap", max_moves=3)
    assert registry == {"default": object}


def test_register_without_vllm_says_so():
    if "vllm" in sys.modules or __import__("importlib").util.find_spec("vllm"):
        pytest.skip("vLLM is importable here")
    with pytest.raises(ImportError, match="cannot find vLLM's EPLB policy registry"):
        fv.register()
    assert fv.FastEplbPolicy.__mro__[1:] == (object,)  # plain class without vLLM


# --------------------------------------------------------------------------- the contract

Policy = fv.FastEplbPolicy


def loads(seed, layers=4, experts=16, dtype=torch.int64):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 5000, (layers, experts))).to(dtype)


def copies(old, new, gpus):
    return fasteplb.moves(np.asarray(old), np.asarray(new), gpus)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float32])
def test_plans_like_fasteplb(dtype):
    w = loads(0, dtype=dtype)
    got = Policy.rebalance_experts(w, 24, 4, 2, 8)
    assert got.dtype == torch.int64 and got.device.type == "cpu"
    assert torch.equal(got, fasteplb.rebalance_experts(w, 24, 4, 2, 8)[0])


def test_plans_from_the_current_placement():
    w0, w1 = loads(1), loads(2)
    old = Policy.rebalance_experts(w0, 24, 4, 2, 8)
    assert torch.equal(Policy.rebalance_experts(w0, 24, 4, 2, 8, old), old)  # nothing moves
    new = Policy.rebalance_experts(w1, 24, 4, 2, 8, old)
    want = fasteplb.rebalance_experts(w1, 24, 4, 2, 8, old_phy2log=old)[0]
    assert torch.equal(new, want)
    fresh = fasteplb.rebalance_experts(w1, 24, 4, 2, 8)[0]
    assert copies(old, new, 8).sum() <= copies(old, fresh, 8).sum()


def test_old_map_padded_with_minus_one():
    # Elastic scale-up: the new slots of vLLM's map hold -1 until the first rebalance.
    w = loads(3)
    old = Policy.rebalance_experts(loads(4), 24, 4, 2, 8).clone()
    old[1, 18:] = -1
    old[2, 5] = 16  # not an expert of this model: also planned fresh
    got = Policy.rebalance_experts(w, 24, 4, 2, 8, old.to(torch.int32))
    fresh = fasteplb.rebalance_experts(w, 24, 4, 2, 8)[0].numpy()
    migrated = fasteplb.rebalance_experts(w[[0, 3]], 24, 4, 2, 8, old_phy2log=old[[0, 3]])[
        0
    ].numpy()
    assert np.array_equal(got[[0, 3]].numpy(), migrated)
    for layer in (1, 2):  # fresh, reordered within each GPU only
        row, want = got[layer].numpy(), fresh[layer]
        for g in range(8):
            assert sorted(row[3 * g : 3 * g + 3]) == sorted(want[3 * g : 3 * g + 3])
        kept = _common.keep_slots(want[None], old[layer].numpy()[None], 8)[0]
        assert np.array_equal(row, kept)
    # Experts a GPU keeps stay in their old slot.
    for layer in (1, 2):
        for slot in range(24):
            g = slot // 3
            e = int(old[layer, slot])
            if e in got[layer, 3 * g : 3 * g + 3].tolist():
                assert (
                    int(got[layer, slot]) == e or list(old[layer, 3 * g : 3 * g + 3]).count(e) > 1
                )


@pytest.mark.parametrize("old_width", [16, 32])
def test_old_map_of_another_width_is_planned_fresh(old_width):
    # Scale-down (32 -> 24 slots: vLLM passes the wider map) and scale-up (16 -> 24).
    w = loads(5)
    old = torch.from_numpy(np.tile(np.arange(old_width) % 16, (4, 1)))
    got = Policy.rebalance_experts(w, 24, 4, 2, 8, old)
    assert torch.equal(got, fasteplb.rebalance_experts(w, 24, 4, 2, 8)[0])


def test_nodes_that_do_not_divide_the_ranks_mean_one_node():
    w = loads(6)
    got = Policy.rebalance_experts(w, 24, 4, 3, 8)
    assert torch.equal(got, fasteplb.rebalance_experts(w, 24, 4, 1, 8)[0])


def test_zero_loads_and_options():
    w = torch.zeros(3, 16, dtype=torch.int32)  # a profile run, or no traffic yet
    got = Policy.rebalance_experts(w, 32, 1, 1, 4)
    assert torch.equal(got, fasteplb.rebalance_experts(w, 32, 1, 1, 4)[0])
    assert all((torch.bincount(row, minlength=16) >= 1).all() for row in got)
    registry = {}
    cls = fv.register(registry, refine="none")
    try:
        w = loads(7)
        assert torch.equal(
            cls.rebalance_experts(w, 24, 4, 2, 8),
            fasteplb.rebalance_experts(w, 24, 4, 2, 8, refine="none")[0],
        )
        # refine="swap" cannot plan from the old map: fresh plans, old slots kept.
        fv.register(registry, refine="swap")
        old = cls.rebalance_experts(loads(10), 24, 4, 2, 8)
        got = cls.rebalance_experts(w, 24, 4, 2, 8, old)
        fresh = fasteplb.rebalance_experts(w, 24, 4, 2, 8, refine="swap")[0].numpy()
        assert np.array_equal(got.numpy(), _common.keep_slots(fresh, old.numpy(), 8))
    finally:
        fv.unregister()
        cls.options = {}


# --------------------------------------------------------------------------- vLLM's own code


def real(name, member, **namespace):
    return _peers.definition(str(vllm_root() / member), name, {"torch": torch, **namespace})


def test_the_policy_subclasses_vllms_abstract_policy():
    import inspect

    vllm_root()
    default = _peers.load("vllm", download=False).module.DefaultEplbPolicy
    abstract = default.__mro__[1]
    assert abstract.__name__ == "AbstractEplbPolicy"
    cls = fv._policy_class(abstract)
    assert issubclass(cls, abstract) and not inspect.isabstract(cls)
    want = inspect.signature(abstract.rebalance_experts).parameters
    assert list(inspect.signature(cls.rebalance_experts).parameters) == list(want)
    w = loads(8)
    assert torch.equal(
        cls().rebalance_experts(w, 24, 4, 2, 8), Policy.rebalance_experts(w, 24, 4, 2, 8)
    )


def test_vllms_callers_accept_the_plans():
    compute_logical_maps = real("compute_logical_maps", "vllm/distributed/eplb/eplb_state.py")
    pad_out = real(
        "_pad_out_tensor", "vllm/distributed/eplb/eplb_state.py",
        gpu_sync_allowed=contextlib.nullcontext,
    )  # fmt: skip
    commit = real(
        "_commit_eplb_maps", "vllm/distributed/eplb/eplb_state.py",
        PIN_MEMORY=False, compute_logical_maps=compute_logical_maps, _pad_out_tensor=pad_out,
    )  # fmt: skip
    run = real(
        "run_rebalance_experts", "vllm/distributed/eplb/async_worker.py",
        device_stream=lambda stream: contextlib.nullcontext(),
    )  # fmt: skip
    layers, experts, slots, gpus = 4, 16, 24, 8
    old = torch.from_numpy(np.tile(np.arange(slots) % experts, (layers, 1)))
    stats = types.SimpleNamespace(
        global_expert_load_window=loads(9), num_replicas=slots, num_groups=4, num_nodes=2,
        num_gpus=gpus,
    )  # fmt: skip
    model_state = types.SimpleNamespace(
        eplb_stats=stats,
        physical_to_logical_map=old.clone(),
        physical_to_logical_map_buffer=old.clone(),
        logical_to_physical_map=torch.full((layers, experts, 1024), -1, dtype=torch.int64),
        logical_replica_count=torch.zeros(layers, experts, dtype=torch.int64),
    )
    eplb_state = types.SimpleNamespace(policy=Policy)
    # The async worker's call (asserts a CPU result), then the commit of the new maps.
    new = run(model_state, eplb_state, old, stream=None)
    want, log2phy, logcnt = fasteplb.rebalance_experts(
        stats.global_expert_load_window, slots, 4, 2, gpus, old_phy2log=old
    )
    assert torch.equal(new, want)
    commit(model_state, new)
    assert torch.equal(model_state.physical_to_logical_map, new)
    assert torch.equal(model_state.logical_replica_count, logcnt)
    l2p = model_state.logical_to_physical_map
    assert (l2p[..., log2phy.shape[2] :] == -1).all()
    for layer in range(layers):
        for e in range(experts):
            n = int(logcnt[layer, e])
            assert sorted(l2p[layer, e, :n].tolist()) == sorted(log2phy[layer, e, :n].tolist())
            assert (l2p[layer, e, n:] == -1).all()
            assert all(int(new[layer, s]) == e for s in l2p[layer, e, :n].tolist())


def test_never_worse_than_vllms_default_policy():
    vllm_root()
    default = _peers.load("vllm", download=False).raw
    for seed in range(3):
        rng = np.random.default_rng(seed)
        w = torch.from_numpy(rng.lognormal(0.0, 1.5, (6, 64)))  # no ties
        for sizes in ((96, 8, 2, 16), (80, 1, 1, 16), (128, 8, 4, 32)):
            ours = Policy.rebalance_experts(w, *sizes)
            theirs = default(w, *sizes)
            a = fasteplb.gpu_loads(ours.numpy(), w.numpy(), sizes[3]).max(axis=1)
            b = fasteplb.gpu_loads(theirs.numpy(), w.numpy(), sizes[3]).max(axis=1)
            assert (a <= b * (1 + 1e-12)).all(), (seed, sizes)


def test_definition_extracts_one_definition(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        textwrap.dedent(
            """
            import vllm  # never executed
            from __future__ import annotations

            LIMIT: int = 3
            Option = Literal["a"]


            def f(x: EngineType) -> int:
                return x + LIMIT


            class C:
                @classmethod
                def m(cls, y):
                    return y * 2
            """
        )
    )
    assert _peers.definition(str(path), "f", {"LIMIT": 3})(1) == 4
    assert _peers.definition(str(path), "C.m")(None, 5) == 10
    assert _peers.definition(str(path), "LIMIT") == 3
    from typing import Literal

    assert _peers.definition(str(path), "Option", {"Literal": Literal}) == Literal["a"]
    with pytest.raises(LookupError, match="no top-level definition 'g'"):
        _peers.definition(str(path), "g")
    with pytest.raises(ValueError, match="unknown dist"):
        _peers.engine_files("deepseek")
