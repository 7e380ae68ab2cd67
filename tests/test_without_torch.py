"""fasteplb with numpy only: torch hidden from imports.

torch is a test dependency, so the numpy path would otherwise only run where torch is missing
(the wheels' test run). Here a child interpreter gets a meta-path finder, first in line, that
refuses ``torch`` and every ``torch.*`` module the way a missing package does
(``ModuleNotFoundError``), then plans, scores, generates and reads workloads, runs the
reference planner, the engine adapters and the command line (``demo``, ``plan``, ``report``,
``bench``), and checks that what needs torch (``.pt`` files) says so. One child for all of it:
starting an interpreter costs more than the checks.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = r'''
import contextlib
import importlib.abc
import io
import json
import os
import sys


class NoTorch(importlib.abc.MetaPathFinder):
    """Refuses torch as an environment without it does."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoTorch())

try:
    import torch  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("torch was not hidden")

import numpy as np

import fasteplb
from fasteplb import workloads as wl
from fasteplb.__main__ import main

assert "torch" not in sys.modules
tmp = sys.argv[1]
done = []


def expect_torch_error(fn, needs):
    """fn() raises ImportError, naming torch and (needs) what wanted it."""
    try:
        fn()
    except ImportError as exc:
        text = str(exc)
        assert "torch" in text and needs in text, text
    else:
        raise AssertionError(f"{fn} worked without torch")


# --- planner: numpy in, numpy int64 out; the pure-Python reference agrees -----------------
rng = np.random.default_rng(0)
weight = rng.integers(0, 1000, (4, 16)).astype(np.float64)
shape = (24, 4, 2, 8)  # 24 slots, 4 groups, 2 nodes, 8 GPUs: hierarchical
for refine in ("local", "swap", "none"):
    out = fasteplb.rebalance_experts(weight, *shape, refine=refine)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.int64 for a in out), refine
    assert out[0].shape == (4, 24) and out[2].shape == (4, 16), refine
    assert (out[2].sum(axis=1) == 24).all()
for refine in ("none", "swap"):
    ours = fasteplb.rebalance_experts(weight, *shape, refine=refine)
    ref = fasteplb.reference.rebalance_experts(weight, *shape, refine=refine)
    assert all(np.array_equal(a, b) for a, b in zip(ours, ref)), refine
listed = fasteplb.rebalance_experts(weight.tolist(), *shape)
plan = fasteplb.rebalance_experts(weight, *shape)
assert all(np.array_equal(a, b) for a, b in zip(listed, plan))
old = plan[0]
moved = fasteplb.rebalance_experts(weight[::-1].copy(), *shape, old_phy2log=old, max_moves=2)
assert (fasteplb.moves(old, moved[0], 8) <= 2).all()
pack, rank = fasteplb.balanced_packing(weight, 4)
assert pack.dtype == np.int64 and (np.bincount(pack[0], minlength=4) == 4).all()
phy2log, prank, logcnt = fasteplb.replicate_experts(weight, 20)
assert phy2log.shape == (4, 20) and (logcnt.sum(axis=1) == 20).all()
done.append("plan")

# --- metrics ---------------------------------------------------------------------------
loads = fasteplb.gpu_loads(plan[0], weight, 8)
assert isinstance(loads, np.ndarray) and loads.shape == (4, 8)
assert np.allclose(loads.sum(axis=1), weight.sum(axis=1))
bal = fasteplb.balancedness(plan[0], weight, 8)
assert isinstance(bal, float) and 0 < bal <= 1
per_layer = fasteplb.balancedness(plan[0], weight, 8, per_layer=True)
assert isinstance(per_layer, np.ndarray) and per_layer.shape == (4,)
bound = fasteplb.lower_bound(weight, *shape)
assert (bound <= loads.max(axis=1) + 1e-9).all()
assert fasteplb.colocated(plan[0], 8).shape == (4,)
assert fasteplb.moved_bytes(old, moved[0], 8, 10).shape == (4,)
assert set(fasteplb.report(plan[0], weight, *shape)) >= {"balancedness"}
done.append("metrics")

# --- workloads: generate, windows, statistics, .json / .npy traces --------------------------
trace = wl.generate("qwen3-like", (3, 16, 4), 20, seed=1)
assert trace.dtype == np.int64 and trace.shape == (20, 3, 16)
assert (trace.sum(axis=2) == 4 * wl.PROFILES["qwen3-like"].tokens_per_step).all()
assert wl.windows(trace, 10).shape == (2, 3, 16)
stats = wl.statistics(trace, window=10, num_gpus_list=(4,), corr_window=5)
assert stats["matrices"] == 2 and stats["eplb"][4] is not None
for ext in ("json", "npy"):
    path = os.path.join(tmp, f"trace.{ext}")
    wl.save_trace(path, trace)
    assert np.array_equal(wl.load_trace(path), trace), ext
pt = os.path.join(tmp, "trace.pt")
expect_torch_error(lambda: wl.save_trace(pt, trace), "writing the .pt trace")
with open(pt, "wb") as f:
    f.write(b"PK\x03\x04 not really a torch file")
expect_torch_error(lambda: wl.load_trace(pt), "reading the .pt trace")
done.append("workloads")

# --- engine adapters: importable and usable on numpy ------------------------------------
from fasteplb.integrations import sglang, trtllm, vllm  # noqa: E402,F401

count, start, slots = trtllm.to_csr(plan[0], 16)
assert count.sum() == 4 * 24
s_plan = sglang.rebalance_experts(weight, 24, 3, 4, 2)  # SGLang's order: 3 slots per GPU
assert isinstance(s_plan[0], np.ndarray) and s_plan[0].shape == (4, 24)
assert (s_plan[2].sum(axis=1) == 24).all()
expect_torch_error(lambda: sglang.load_recorder_dump(pt), "")
done.append("integrations")


# --- command line ------------------------------------------------------------------------
def cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


code, out, err = cli("demo", "--rounds", "1")
assert code == 0 and "same plan" in out, (code, out, err)
json_trace = os.path.join(tmp, "trace.json")
plan_file = os.path.join(tmp, "plan.json")
code, out, err = cli("plan", "--load", json_trace, "--replicas", 24, "--gpus", 8, "--nodes", 2,
                     "--groups", 4, "--out", plan_file)
assert code == 0 and os.path.isfile(plan_file), (code, out, err)
code, out, err = cli("report", "--load", json_trace, "--plan", plan_file)
assert code == 0 and "balancedness" in out, (code, out, err)
code, out, err = cli("plan", "--load", pt, "--replicas", 24, "--gpus", 8, "--out",
                     os.path.join(tmp, "p2.json"))
assert code == 2 and "torch" in err and len(err.strip().splitlines()) == 1, (code, out, err)
empty = os.path.join(tmp, "no-peers")
code, out, err = cli("bench", "--configs", "Mixtral", "--profiles", "near-uniform", "--windows",
                     2, "--window-steps", 5, "--no-download", "--peers-cache", empty)
assert code == 0, (code, out, err)
assert "| fasteplb |" in out and "| reference |" in out and "| vllm |" not in out, out
done.append("cli")

assert "torch" not in sys.modules
print(json.dumps(done))
'''


def test_numpy_only_with_torch_hidden(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(CHILD))
    run = subprocess.run(
        [sys.executable, str(child), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().splitlines()[-1] == (
        '["plan", "metrics", "workloads", "integrations", "cli"]'
    )
