"""python -m fasteplb bench (fasteplb._bench), against tiny stand-ins of the engines' planners.

No network and no real engine files: the stand-ins (toy planners with the engines' file layout,
imports and signatures, as in test_peers.py) are written into tmp_path and loaded with
``--peers-root``; every run is a tiny Mixtral-shaped case of two short windows.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from fasteplb import workloads as wl
from fasteplb.__main__ import main
from fasteplb._bench import engines, plots, tables
from fasteplb._bench import peers as _peers
from helpers import write_tree

pytest.importorskip("torch")

VLLM = "vllm/distributed/eplb/policy/"
SGLANG = "sglang/srt/eplb/eplb_algorithms/"

# Toy planners: slot p holds expert p % E (a valid plan whenever P >= E).
VLLM_FILES = {
    VLLM + "abstract.py": """
        from abc import ABC, abstractmethod


        class AbstractEplbPolicy(ABC):
            @classmethod
            @abstractmethod
            def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                                  old_global_expert_indices=None):
                raise NotImplementedError
    """,
    VLLM + "default.py": """
        import torch

        from .abstract import AbstractEplbPolicy


        class DefaultEplbPolicy(AbstractEplbPolicy):
            @classmethod
            def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                                  old_global_expert_indices=None):
                assert weight.dim() == 2
                layers, experts = weight.shape
                return (torch.arange(num_replicas) % experts).repeat(layers, 1)
    """,
}
SGLANG_FILES = {
    SGLANG + "deepseek.py": """
        import torch


        def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus,
                              enable_hierarchical):
            assert weight.dim() == 2
            layers, experts = weight.shape
            return (torch.arange(num_replicas) % experts).repeat(layers, 1), None, None
    """,
    SGLANG + "deepseek_vec.py": """
        import torch


        def rebalance_experts(tokens_per_expert, num_physical_experts,
                              num_local_physical_experts, num_groups, num_nodes,
                              enable_hierarchical):
            assert tokens_per_expert.dim() == 3  # the window's per-step loads [T, L, E]
            _, layers, experts = tokens_per_expert.shape
            row = torch.arange(num_physical_experts, dtype=torch.int) % experts
            return row.repeat(layers, 1), None, None
    """,
}
TINY = ["--configs", "Mixtral", "--profiles", "near-uniform", "--windows", "2",
        "--window-steps", "5"]  # fmt: skip
FIELDS = ("impl", "config", "profile", "time_ms", "balancedness_in", "balancedness_next", "moves")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected download {args}")

    monkeypatch.setattr(_peers, "_download", refuse)


@pytest.fixture
def standin(tmp_path):
    return write_tree(tmp_path / "site", {**VLLM_FILES, **SGLANG_FILES})


def test_help_works():
    proc = subprocess.run([sys.executable, "-m", "fasteplb", "bench", "--help"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for option in ("--quick", "--json", "--peers-cache", "--no-download", "--plots",
                   "--markdown"):  # fmt: skip
        assert option in proc.stdout


def test_tiny_run_writes_rows_for_every_planner(standin, tmp_path, capsys):
    out, md = tmp_path / "rows.json", tmp_path / "report.md"
    code = main(["bench", *TINY, "--peers-root", str(standin), "--json", str(out),
                 "--markdown", str(md)])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "skipping" not in captured.out and "failed" not in captured.err
    rows = json.loads(out.read_text())
    assert isinstance(rows, list)
    assert sorted(r["impl"] for r in rows) == sorted((*engines.IMPLS, engines.MIGRATE))
    for r in rows:
        assert all(f in r for f in FIELDS), r
        assert r["config"] == "Mixtral-8x7B EP4" and r["profile"] == "near-uniform"
        assert r["time_ms"] > 0 and r["moves"] >= 0
        for key in ("balancedness_in", "balancedness_next", "bound_balancedness"):
            assert 0 < r[key] <= 1 + 1e-12, (key, r)
        assert r["balancedness_in"] <= r["bound_balancedness"] + 1e-9
        assert r["extra"] is (r["impl"] == engines.MIGRATE)
        assert math.isfinite(r["speedup_vs_fastest_engine"])
    by = {r["impl"]: r for r in rows}
    # The toy planners are not the greedy: fasteplb balances at least as well in-sample.
    assert by["fasteplb"]["balancedness_in"] >= by["vllm"]["balancedness_in"]
    assert by["fasteplb:none"]["balancedness_in"] == pytest.approx(
        by["reference"]["balancedness_in"]
    )
    assert by["vllm"]["moves"] == 0  # the toy plan never changes
    text = md.read_text()
    assert "Mixtral-8x7B EP4" in text and "fasteplb:migrate" in text
    assert "| near-uniform | sglang-vec |" in text


def test_missing_peers_are_skipped_with_a_message(tmp_path, capsys):
    root = write_tree(tmp_path / "only-vllm", VLLM_FILES)
    out = tmp_path / "rows.json"
    assert main(["bench", *TINY, "--peers-root", str(root), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipping peer sglang:" in printed and "skipping peer sglang-vec:" in printed
    assert "- skipped sglang:" in printed  # also named in the report
    impls = {r["impl"] for r in json.loads(out.read_text())}
    assert "vllm" in impls and not impls & {"sglang", "sglang-vec"}


def test_no_download_with_an_empty_cache_skips_every_peer(tmp_path, capsys):
    out = tmp_path / "rows.json"
    code = main(["bench", *TINY, "--peers-cache", str(tmp_path / "empty"), "--no-download",
                 "--json", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    for name in engines.ENGINES:
        assert f"skipping peer {name}:" in printed
    rows = json.loads(out.read_text())
    assert {r["impl"] for r in rows} == {*engines.IMPLS[:4], engines.MIGRATE}
    assert all(r["speedup_vs_fastest_engine"] is None for r in rows)


def test_a_failing_peer_is_reported_and_the_rest_runs(tmp_path):
    files = dict(VLLM_FILES)
    files[VLLM + "default.py"] = files[VLLM + "default.py"].replace(
        "assert weight.dim() == 2", "raise ValueError('toy refuses')"
    )
    root = write_tree(tmp_path / "bad", files)
    peers, skipped = engines.load_peers(["vllm"], root=str(root))
    assert not skipped
    config = next(c for c in engines.CONFIGS if c.model == "mixtral-8x7b")
    settings = engines.Settings(windows=2, inner=2, full_profiles=False, window_steps=5)
    rows, messages, _ = engines.run_case(config, "near-uniform", peers, settings)
    assert len(messages) == 1 and "toy refuses" in messages[0]
    assert "vllm" not in {r["impl"] for r in rows} and "fasteplb" in {r["impl"] for r in rows}


def test_configurations_and_case_selection():
    for c in engines.CONFIGS:
        shape = c.shape
        assert c.num_replicas % c.num_gpus == 0 and c.num_replicas >= shape.experts
        assert shape.experts % c.num_groups == 0 and c.num_gpus % c.num_nodes == 0
        assert set(c.profiles + c.full_profiles) <= set(wl.PROFILES)
    quick = engines.select(engines.CONFIGS, engines.QUICK)
    full = engines.select(engines.CONFIGS, engines.FULL)
    assert len({c.name for c, _ in quick}) == len(quick)  # one profile per configuration
    assert set(quick) < set(full)
    assert {c.name for c, _ in full} == {c.name for c in engines.CONFIGS}
    ds = next(c for c in engines.CONFIGS if c.name == engines.PLOT_CASE[0])
    assert {p for c, p in full if c is ds} == set(wl.PROFILES)


def test_report_headline_plots_and_sections(standin, tmp_path):
    peers, _ = engines.load_peers(root=str(standin))
    config = next(c for c in engines.CONFIGS if c.model == "mixtral-8x7b")
    settings = engines.Settings(windows=2, inner=2, full_profiles=False, window_steps=5)
    result = engines.run([config], settings, profiles=["aux-loss-balanced"], peers=peers,
                        log=sys.stderr)  # fmt: skip
    assert result.detail["config"] is config
    (target,) = tables.targets(result)
    assert target["balance_ok"] and target["speedup"] > 0
    head = tables.headline(result)
    assert head.startswith("## How it compares") and "| Mixtral-8x7B EP4 |" in head
    assert "bench/plots/time_vs_size.png" in head

    path = tmp_path / "RESULTS.md"
    path.write_text("# t\n\n<!-- bench-core -->\ncore\n<!-- /bench-core -->\n")
    tables.write_section(str(path), "bench-engines", "one", heading="## engines")
    tables.write_section(str(path), "bench-engines", "two", heading="## engines")
    text = path.read_text()
    assert text.count("## engines") == 1 and "two" in text and "one" not in text
    assert tables.read_section(str(path), "bench-core") == "core"

    pytest.importorskip("matplotlib")
    paths = plots.plot(result, str(tmp_path / "plots"))
    assert [p.rsplit("/", 1)[1] for p in paths] == list(plots.PLOT_FILES)
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
