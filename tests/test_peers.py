"""fasteplb._bench.peers: loading the engines' EPLB policy files by path, without the engines.

The fast tests run against a tiny stand-in of the wheels' layout written into tmp_path (our
own toy planners with the engines' imports and signatures) and never touch the network. The
last test runs the real vLLM / SGLang planners when their files are already in the cache
(``python -c "from fasteplb._bench import peers; peers.fetch()"``) and is skipped otherwise.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import textwrap
import zipfile

import fasteplb
import numpy as np
import pytest
from fasteplb._bench import peers as _peers
from helpers import write_tree

torch = pytest.importorskip("torch")  # the wheels' test run has numpy only

VLLM = "vllm/distributed/eplb/policy/"
SGLANG = "sglang/srt/eplb/eplb_algorithms/"

# Toy planners: every slot p holds expert p % E; each records how it was called.
STANDIN = {
    VLLM + "abstract.py": """
        from abc import ABC, abstractmethod

        import torch


        class AbstractEplbPolicy(ABC):
            @classmethod
            @abstractmethod
            def rebalance_experts(
                cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                old_global_expert_indices=None,
            ) -> torch.Tensor:
                raise NotImplementedError
    """,
    VLLM + "default.py": """
        import numpy as np
        import torch

        from .abstract import AbstractEplbPolicy

        CALLS = []


        class DefaultEplbPolicy(AbstractEplbPolicy):
            @classmethod
            def rebalance_experts(
                cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                old_global_expert_indices=None,
            ):
                CALLS.append((weight, num_replicas, num_groups, num_nodes, num_ranks))
                layers, experts = weight.shape
                row = np.arange(num_replicas, dtype=np.int64) % experts
                return torch.from_numpy(np.tile(row, (layers, 1)))
    """,
    SGLANG + "deepseek.py": """
        import torch

        CALLS = []


        def rebalance_experts(
            weight, num_replicas, num_groups, num_nodes, num_gpus, enable_hierarchical
        ):
            CALLS.append(dict(
                weight=weight, num_replicas=num_replicas, num_groups=num_groups,
                num_nodes=num_nodes, num_gpus=num_gpus,
                enable_hierarchical=enable_hierarchical,
            ))
            layers, experts = weight.shape
            phy2log = (torch.arange(num_replicas) % experts).repeat(layers, 1)
            return phy2log, None, None
    """,
    SGLANG + "deepseek_vec.py": """
        from typing import Optional

        import torch

        CALLS = []


        def rebalance_experts(
            tokens_per_expert: torch.Tensor,
            num_physical_experts: int,
            num_local_physical_experts: int,
            num_groups: Optional[int],
            num_nodes: int,
            enable_hierarchical: bool,
        ):
            CALLS.append(dict(
                tokens_per_expert=tokens_per_expert,
                num_physical_experts=num_physical_experts,
                num_local_physical_experts=num_local_physical_experts,
                num_groups=num_groups, num_nodes=num_nodes,
                enable_hierarchical=enable_hierarchical,
            ))
            _, layers, experts = tokens_per_expert.shape
            row = torch.arange(num_physical_experts, dtype=torch.int) % experts
            return row.repeat(layers, 1), None, None
    """,
}


@pytest.fixture
def standin(tmp_path):
    return write_tree(tmp_path / "site", STANDIN)


def leaked():
    return sorted(
        k
        for k in sys.modules
        if k.split(".")[0] in ("vllm", "sglang") or k.startswith("_fasteplb_peer_")
    )


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call {args}")

    monkeypatch.setattr(_peers.subprocess, "run", refuse)


@pytest.mark.parametrize("name", _peers.PEERS)
def test_loads_standin_by_path_without_engine_modules(standin, name):
    assert leaked() == []
    peer = _peers.load(name, root=str(standin))
    assert leaked() == []
    assert peer.name == name and peer.dist == name.split("-")[0]
    assert peer.source == peer.module.__file__
    assert peer.source.startswith(str(standin))
    assert not peer.verified and peer.version == "unknown"
    with open(peer.source, "rb") as f:
        assert peer.sha256 == hashlib.sha256(f.read()).hexdigest()
    assert peer.label == f"{peer.dist} unknown {peer.what}"
    if name == "vllm":  # the relative import resolved to the stand-in's own abstract.py
        policy = peer.module.DefaultEplbPolicy
        base = policy.__mro__[1]
        assert base.__name__ == "AbstractEplbPolicy"
        assert base.__module__.endswith(".abstract") and base.__module__ not in sys.modules
    assert _peers.load(name, root=str(standin)) is peer  # cached per (name, root, content)


def test_version_from_dist_info(standin):
    (standin / "sglang-9.9.9.dist-info").mkdir()
    assert _peers.load("sglang", root=str(standin)).version == "9.9.9"


def test_plan_uses_each_engines_calling_convention(standin):
    vllm, sglang, vec = (_peers.load(n, root=str(standin)) for n in _peers.PEERS)
    w = torch.rand(3, 8, dtype=torch.float64)
    expect = (torch.arange(12) % 8).repeat(3, 1)

    for peer in (vllm, sglang, vec):
        peer.module.CALLS.clear()
        out = peer(w, 12, 4, 2, 4)
        assert out.dtype == torch.int64 and torch.equal(out, expect)
        assert len(peer.module.CALLS) == 1

    got, *sizes = vllm.module.CALLS[0]
    assert got is w and sizes == [12, 4, 2, 4]  # num_ranks = num_gpus, positional

    call = sglang.module.CALLS[0]
    assert call.pop("weight") is w
    assert call == dict(
        num_replicas=12, num_groups=4, num_nodes=2, num_gpus=4, enable_hierarchical=True
    )

    call = vec.module.CALLS[0]
    assert torch.equal(call.pop("tokens_per_expert"), w.unsqueeze(0))  # T = 1 added
    assert call == dict(
        num_physical_experts=12,
        num_local_physical_experts=3,
        num_groups=4,
        num_nodes=2,
        enable_hierarchical=True,
    )

    # Groups not a multiple of the nodes: SGLang's auto rule picks the global policy.
    sglang(w, 12, 1, 2, 4)
    vec(w, 12, 1, 2, 4)
    assert sglang.module.CALLS[-1]["enable_hierarchical"] is False
    assert vec.module.CALLS[-1]["enable_hierarchical"] is False


def test_plan_time_windows_and_array_input(standin):
    vllm, sglang, vec = (_peers.load(n, root=str(standin)) for n in _peers.PEERS)
    window = torch.rand(5, 2, 4)
    for peer in (vllm, sglang):
        assert peer(window.numpy(), 8, 2, 1, 2).shape == (2, 8)
    assert torch.allclose(vllm.module.CALLS[-1][0], window.sum(0))
    assert torch.allclose(sglang.module.CALLS[-1]["weight"], window.sum(0))
    assert vec(window, 8, 2, 1, 2).shape == (2, 8)
    assert vec.module.CALLS[-1]["tokens_per_expert"] is window
    with pytest.raises(ValueError, match="multiple of num_gpus"):
        vec(window, 9, 2, 1, 2)
    with pytest.raises(ValueError, match="1-D"):
        vllm(torch.rand(4), 8, 2, 1, 2)


def test_missing_peer_raises_when_download_is_off(tmp_path):
    cache = tmp_path / "empty"
    with pytest.raises(_peers.PeerUnavailable) as err:
        _peers.fetch(str(cache), download=False)
    msg = str(err.value)
    assert "vllm 0.33.0" in msg and "download=False" in msg
    assert "pip download --no-deps" in msg and str(cache / "wheels") in msg
    with pytest.raises(_peers.PeerUnavailable, match=r"sglang 0\.5\.23 is not in the cache"):
        _peers.load("sglang-vec", str(cache), download=False)
    reasons = _peers.available(str(cache))
    assert set(reasons) == set(_peers.PEERS)
    assert all("download=False" in r for r in reasons.values())
    assert leaked() == []


def test_missing_files_under_root(tmp_path):
    with pytest.raises(_peers.PeerUnavailable, match=r"missing .*default\.py"):
        _peers.load("vllm", root=str(tmp_path))
    assert _peers.available(root=str(tmp_path))["sglang"].startswith("peer sglang: missing")


def test_unknown_peer():
    with pytest.raises(ValueError, match="unknown peer 'deepseek'"):
        _peers.load("deepseek")


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("from vllm.logger import init_logger", "vllm"),
        ("import sglang.srt.utils", "sglang"),
        ("from .helpers import x", "the sibling module .helpers"),
    ],
)
def test_engine_imports_are_refused(tmp_path, line, named):
    files = dict(STANDIN)
    files[VLLM + "default.py"] = line + "\n" + textwrap.dedent(STANDIN[VLLM + "default.py"])
    root = write_tree(tmp_path, files)
    expected = f"default.py:1 (`{line}`) imports {named}, which fasteplb does not provide"
    with pytest.raises(_peers.PeerUnavailable, match=re.escape(expected)):
        _peers.load("vllm", root=str(root))
    assert leaked() == []


def make_wheel(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for member, code in files.items():
            z.writestr(member, textwrap.dedent(code).lstrip())


def test_extracts_the_policy_files_from_a_cached_wheel(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    sg = {k: v for k, v in STANDIN.items() if k.startswith("sglang/")}
    make_wheel(cache / "wheels" / "sglang-0.5.23-py3-none-any.whl", sg)
    pinned = {
        k: hashlib.sha256(textwrap.dedent(v).lstrip().encode()).hexdigest() for k, v in sg.items()
    }
    monkeypatch.setitem(_peers._DISTS, "sglang", _peers._Dist("sglang", "0.5.23", pinned))

    got = _peers.fetch(str(cache), download=False, peers=("sglang", "sglang-vec"))
    assert got["sglang"] == str(cache / "sglang-0.5.23" / SGLANG / "deepseek.py")
    peer = _peers.load("sglang-vec", str(cache), download=False)
    assert peer.verified and peer.version == "0.5.23"
    assert peer.label == "sglang 0.5.23 deepseek_vec.rebalance_experts"
    reasons = _peers.available(str(cache))
    assert reasons["sglang"] is None and reasons["sglang-vec"] is None
    assert "vllm 0.33.0" in reasons["vllm"]


def test_rejects_a_wheel_whose_files_differ_from_the_pinned_release(tmp_path):
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    make_wheel(cache / "wheels" / "vllm-0.33.0-py3-none-any.whl", STANDIN)
    with pytest.raises(_peers.PeerUnavailable, match=r"does not match the pinned vllm 0\.33\.0"):
        _peers.load("vllm", str(cache), download=False)
    make_wheel(cache / "wheels" / "vllm-0.33.0-py3-none-any.whl", {"vllm/__init__.py": ""})
    with pytest.raises(_peers.PeerUnavailable, match=r"has no vllm/.*/abstract\.py"):
        _peers.load("vllm", str(cache), download=False)
    (cache / "wheels" / "sglang-0.5.23-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(_peers.PeerUnavailable, match="cannot read the wheel"):
        _peers.load("sglang", str(cache), download=False)


def test_download_failure_says_what_failed(tmp_path, monkeypatch):
    seen = []

    def pip(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(_peers.subprocess, "run", pip)
    with pytest.raises(_peers.PeerUnavailable) as err:
        _peers.load("vllm", str(tmp_path))
    msg = str(err.value)
    assert "pip download vllm==0.33.0 failed (exit 1; offline?)" in msg
    assert "No matching distribution" in msg and "fix:" in msg
    assert seen[0][:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in seen[0] and "vllm==0.33.0" in seen[0]


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTEPLB_PEERS_CACHE", str(tmp_path))
    assert _peers.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("FASTEPLB_PEERS_CACHE")
    assert _peers.default_cache_dir().endswith("fasteplb/peers")


# --------------------------------------------------------------------------- the real planners


def check_valid(phy2log, layers, experts, replicas):
    assert phy2log.dtype == torch.int64 and tuple(phy2log.shape) == (layers, replicas)
    for row in phy2log.tolist():
        assert min(row) >= 0 and max(row) < experts
        assert set(row) == set(range(experts))


def test_real_peers_from_the_cache():
    reasons = _peers.available()
    if any(reasons.values()):
        pytest.skip("peer wheels not cached; run fasteplb._bench.peers.fetch() to enable")
    peers = {name: _peers.load(name, download=False) for name in _peers.PEERS}
    assert leaked() == []
    assert [p.version for p in peers.values()] == ["0.33.0", "0.5.23", "0.5.23"]
    assert all(p.verified for p in peers.values())
    for seed in range(5):
        w = torch.from_numpy(np.random.default_rng(seed).lognormal(0.0, 1.5, (4, 16)))
        expected = fasteplb.rebalance_experts(w, 24, 4, 2, 8, refine="none")[0]
        for name, peer in peers.items():
            got = peer(w, 24, 4, 2, 8)
            check_valid(got, 4, 16, 24)
            if name != "sglang-vec":  # DeepSeek's greedy, as fasteplb's "none" (no ties here)
                assert torch.equal(got, expected), name
        # The global policy (groups not a multiple of nodes) and a time window for the vec one.
        for peer in peers.values():
            check_valid(peer(w, 24, 1, 2, 8), 4, 16, 24)
        check_valid(peers["sglang-vec"](w.expand(3, 4, 16), 24, 4, 2, 8), 4, 16, 24)
    assert leaked() == []
