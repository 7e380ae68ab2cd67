"""The package face: what ``import fasteplb`` loads, and the sub-modules reached lazily.

``import fasteplb`` loads the planner and the metrics only; ``fasteplb.workloads``,
``fasteplb.reference`` and ``fasteplb.integrations`` are imported on first attribute access
(PEP 562), and the benchmark code (``fasteplb._bench``) never by the package. Each check
runs in a fresh interpreter, where ``sys.modules`` shows exactly what was imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import fasteplb
import pytest
from fasteplb import workloads as wl

LAZY = ("integrations", "reference", "workloads")
# Imported by nothing that `import fasteplb` runs.
HEAVY = ("fasteplb._bench", "fasteplb._cli", "fasteplb.__main__", "torch")

PROBE = """
import json, sys

def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in ("fasteplb", "torch"))

steps = {}
"""


def probe(body: str) -> dict:
    """Runs PROBE + body in a fresh interpreter; body fills `steps` with loaded() snapshots."""
    code = PROBE + textwrap.dedent(body) + "\nprint(json.dumps(steps))\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def under(modules: list[str], package: str) -> list[str]:
    return [m for m in modules if m == package or m.startswith(package + ".")]


def test_import_fasteplb_loads_no_submodule_and_no_benchmark():
    steps = probe("""
        import fasteplb
        steps["import"] = loaded()
        fasteplb.workloads.generate("qwen3-like", "qwen3-235b", 2, seed=0)  # README's call
        steps["workloads"] = loaded()
        fasteplb.reference.rebalance_experts([[1.0, 2.0]], 2, 1, 1, 1)
        steps["reference"] = loaded()
        fasteplb.integrations
        steps["integrations"] = loaded()
    """)
    first = steps["import"]
    for name in (*(f"fasteplb.{m}" for m in LAZY), *HEAVY):
        assert not under(first, name), (name, first)
    assert "fasteplb._api" in first and "fasteplb.metrics" in first
    # Each access imports that sub-module (and its own parts) and nothing else.
    for before, now, name in (
        ("import", "workloads", "workloads"),
        ("workloads", "reference", "reference"),
        ("reference", "integrations", "integrations"),
    ):
        added = sorted(set(steps[now]) - set(steps[before]))
        assert added and added == under(added, f"fasteplb.{name}"), (name, added)
    for name in HEAVY:
        assert not under(steps["integrations"], name), (name, steps["integrations"])


def test_star_import_is_the_function_api_only():
    steps = probe("""
        from fasteplb import *
        steps["star"] = loaded()
        steps["names"] = sorted(k for k in dir() if not k.startswith("_") or k == "__version__")
    """)
    assert not [m for m in steps["star"] if m.split(".")[1:2] and m.split(".")[1] in LAZY]
    assert set(fasteplb.__all__) <= set(steps["names"])
    assert not set(LAZY) & set(steps["names"])


def test_dir_lists_the_api_and_the_lazy_submodules():
    listed = dir(fasteplb)
    assert listed == sorted({*fasteplb.__all__, *LAZY})
    for name in listed:
        assert getattr(fasteplb, name) is not None
    assert fasteplb.workloads is wl
    with pytest.raises(AttributeError, match="module 'fasteplb' has no attribute 'workload'"):
        fasteplb.workload  # noqa: B018


def test_workloads_keeps_its_public_names():
    public = {
        "MODELS", "PROFILES", "TRAFFIC", "ModelShape", "Profile", "Traffic",
        "domain_popularity", "expected_windows", "generate", "load_trace", "save_trace",
        "statistics", "windows",
    }  # fmt: skip
    assert set(wl.__all__) == public
    for name in public:
        assert getattr(wl, name) is not None
    assert wl.__doc__ and "Generator, in short" in wl.__doc__


def test_benchmark_package_imports_none_of_its_modules():
    steps = probe("""
        import fasteplb._bench
        steps["package"] = loaded()
        import fasteplb._bench.peers
        steps["peers"] = loaded()
    """)
    assert under(steps["package"], "fasteplb._bench") == ["fasteplb._bench"]
    # The integration tests load the engines' files through peers: no benchmark, no workloads.
    assert under(steps["peers"], "fasteplb._bench") == ["fasteplb._bench", "fasteplb._bench.peers"]
    assert not under(steps["peers"], "fasteplb.workloads")
