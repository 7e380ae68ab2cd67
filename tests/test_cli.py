"""The command line: python -m fasteplb / the fasteplb console script.

``plan`` / ``report`` round trips on small synthetic traces written here with
``fasteplb.workloads.save_trace``, every output format read back, and every user-error path:
exit status 2, exactly one line on stderr, no traceback.
"""

from __future__ import annotations

import io
import json
import pathlib
import re
import shutil
import subprocess
import sys

import fasteplb
import numpy as np
import pytest
from fasteplb import _cli, _version
from fasteplb import workloads as wl
from fasteplb.__main__ import main
from fasteplb._bench import engines as _bench
from helpers import check_plan

ROOT = pathlib.Path(__file__).resolve().parents[1]

# 3 layers x 16 experts in 4 groups onto 24 slots, 2 nodes x 2 GPUs (hierarchical).
SIZES = dict(replicas=24, groups=4, nodes=2, gpus=4)
PLAN_ARGS = ["--replicas", "24", "--groups", "4", "--nodes", "2", "--gpus", "4"]


def has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


needs_torch = pytest.mark.skipif(not has("torch"), reason="needs torch")


@pytest.fixture
def trace():
    rng = np.random.default_rng(7)
    return rng.integers(0, 500, size=(6, 3, 16)).astype(np.int64)


@pytest.fixture
def files(tmp_path, trace):
    """The trace as the public trace JSON and as .npy (written by save_trace)."""
    wl.save_trace(tmp_path / "trace.json", trace, meta={"what": "test"})
    wl.save_trace(tmp_path / "trace.npy", trace)
    return tmp_path


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, *args, match=None):
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and "error:" in err
    if match:
        assert re.search(match, err), err
    return err


def plan(capsys, tmp_path, load, out, *extra):
    code, stdout, err = run_cli(capsys, "plan", "--load", load, *PLAN_ARGS, "--out",
                                tmp_path / out, *extra)  # fmt: skip
    assert code == 0, err
    return stdout


# ----------------------------------------------------------------------------------------
# demo, version, help
# ----------------------------------------------------------------------------------------


def test_demo_runs_and_reports_identical_plans():
    proc = subprocess.run(
        [sys.executable, "-m", "fasteplb", "demo", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "balancedness" in out and "same plan" in out
    rows = re.findall(r"^(none|swap)\s+.*\s(yes|NO)$", out, flags=re.MULTILINE)
    assert rows == [("none", "yes"), ("swap", "yes")], out
    assert "58 layers x 256 experts" in out


def test_version_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"fasteplb {fasteplb.__version__}"


def test_version_is_pyprojects():
    text = (ROOT / "pyproject.toml").read_text()
    want = re.search(r'^\[project\]$.*?^version = "([^"]+)"', text, re.M | re.S).group(1)
    assert fasteplb.__version__ == want == _version.from_pyproject(ROOT / "pyproject.toml")
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert want not in cmake  # CMake reads it from pyproject.toml, not a copy


def test_missing_command_is_a_usage_error(capsys):
    err = assert_user_error(capsys)
    assert "usage" in err


def test_demo_in_process(capsys):
    assert main(["demo", "--rounds", "1"]) == 0
    assert "same plan" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("fasteplb") is None, reason="console script not on PATH")
def test_console_script_version():
    proc = subprocess.run(["fasteplb", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"fasteplb {fasteplb.__version__}"


@pytest.mark.parametrize("command", [[], ["plan"], ["report"], ["demo"], ["bench"]])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    if command == ["plan"]:
        for name in _cli.FORMATS:
            assert f"\n  {name} " in out  # every format defined
        assert "--init-expert-location" in out


# ----------------------------------------------------------------------------------------
# plan and report round trips
# ----------------------------------------------------------------------------------------


def test_plan_json_round_trip(capsys, files, trace):
    out = plan(capsys, files, files / "trace.json", "plan.json")
    assert "wrote" in out and "balancedness" in out
    doc = json.loads((files / "plan.json").read_text())
    weight = trace.sum(axis=0)
    want = fasteplb.rebalance_experts(weight, 24, 4, 2, 4)
    for key, arr in zip(("phy2log", "log2phy", "logcnt"), want):
        np.testing.assert_array_equal(np.array(doc[key]), arr)
    check_plan(weight, *(np.array(doc[k]) for k in ("phy2log", "log2phy", "logcnt")),
               24, 4, 2, 4)  # fmt: skip
    assert (doc["num_gpus"], doc["num_nodes"], doc["num_groups"]) == (4, 2, 4)
    assert doc["policy"] == "hierarchical" and doc["options"]["refine"] == "local"
    assert doc["options"]["window"] == 6 and doc["fasteplb_version"] == fasteplb.__version__


def test_window_sums_the_last_steps(capsys, files, trace):
    plan(capsys, files, files / "trace.npy", "w.json", "--window", "2", "--refine", "none")
    doc = json.loads((files / "w.json").read_text())
    want = fasteplb.rebalance_experts(trace[-2:].sum(axis=0), 24, 4, 2, 4, refine="none")[0]
    np.testing.assert_array_equal(np.array(doc["phy2log"]), want)
    assert doc["options"]["window"] == 2


FORMAT_FILES = [
    ("json", "p.json"),
    ("deepseek", "p.npz"),
    pytest.param("deepseek", "p.pt", marks=needs_torch),
    ("vllm", "v.npz"),
    ("vllm", "v.json"),
    pytest.param("vllm", "v.pt", marks=needs_torch),
    ("sglang", "s.json"),
    pytest.param("sglang", "s.pt", marks=needs_torch),
    ("trtllm", "t.yaml"),
    ("trtllm", "t.npz"),
]


@pytest.mark.parametrize("fmt, name", FORMAT_FILES)
def test_every_format_reads_back(fmt, name, capsys, files, trace):
    plan(capsys, files, files / "trace.npy", name, "--format", fmt, "--first-layer", "3")
    want = fasteplb.rebalance_experts(trace.sum(axis=0), 24, 4, 2, 4)
    got, _ = _cli.read_plan(str(files / name))
    np.testing.assert_array_equal(got, want[0])
    # And report scores it like the json plan.
    code, out, err = run_cli(capsys, "report", "--load", files / "trace.npy", "--plan",
                             files / name, "--gpus", "4", "--nodes", "2", "--groups", "4")  # fmt: skip
    assert code == 0, err
    bal = fasteplb.balancedness(want[0], trace.sum(axis=0), 4)
    assert f"balancedness {bal:.4f}" in out.splitlines()[-1]


def test_format_contents(capsys, files, trace):
    weight = trace.sum(axis=0)
    phy2log, log2phy, logcnt = fasteplb.rebalance_experts(weight, 24, 4, 2, 4)
    for fmt, name in [("deepseek", "d.npz"), ("vllm", "v.json"), ("sglang", "s.json"),
                      ("trtllm", "t.yaml"), ("trtllm", "t.npz")]:  # fmt: skip
        plan(capsys, files, files / "trace.npy", name, "--format", fmt, "--first-layer", "3")
    with np.load(files / "d.npz") as z:
        assert sorted(z.files) == ["log2phy", "logcnt", "phy2log"]
        for key, arr in zip(("phy2log", "log2phy", "logcnt"), (phy2log, log2phy, logcnt)):
            np.testing.assert_array_equal(z[key], arr)
    # vLLM: its compute_logical_maps' layout (slots of each expert in ascending order).
    v = json.loads((files / "v.json").read_text())
    assert sorted(v) == ["logical_replica_count", "logical_to_physical_map",
                         "physical_to_logical_map"]  # fmt: skip
    l2p, count = np.array(v["logical_to_physical_map"]), np.array(v["logical_replica_count"])
    np.testing.assert_array_equal(count, logcnt)
    assert l2p.shape == (3, 16, int(logcnt.max()))
    for layer in range(3):
        for e in range(16):
            want = np.flatnonzero(phy2log[layer] == e)
            np.testing.assert_array_equal(l2p[layer, e, : len(want)], want)
            assert (l2p[layer, e, len(want) :] == -1).all()
    # SGLang: exactly the key its --init-expert-location passes to init_by_mapping.
    s = json.loads((files / "s.json").read_text())
    assert list(s) == ["physical_to_logical_map"]
    np.testing.assert_array_equal(np.array(s["physical_to_logical_map"]), phy2log)
    # TensorRT-LLM: MoeLoadBalancerConfig's three fields, model layers from --first-layer.
    cfg = _cli._own_yaml((files / "t.yaml").read_text(), "t.yaml")
    assert sorted(cfg) == ["initial_global_assignments", "layer_updates_per_iter", "num_slots"]
    assert cfg["num_slots"] == 24 and cfg["layer_updates_per_iter"] == 0
    assert list(cfg["initial_global_assignments"]) == [3, 4, 5]
    if has("yaml"):
        import yaml

        assert yaml.safe_load((files / "t.yaml").read_text()) == cfg
    with np.load(files / "t.npz") as z:
        np.testing.assert_array_equal(z["layers"], [3, 4, 5])
        np.testing.assert_array_equal(z["initial_global_assignments"], phy2log)
        np.testing.assert_array_equal(z["expertReplicaCount"], logcnt)
        starts, slots = z["expertReplicaStartOffset"], z["globalSlotIds"]
        for layer in range(3):
            for e in range(16):
                got = slots[layer, starts[layer, e] : starts[layer, e] + logcnt[layer, e]]
                assert (phy2log[layer, got] == e).all()


@needs_torch
def test_sglang_recorder_dump_to_init_expert_location(capsys, tmp_path, trace):
    """One command from a recorder dump (stat mode, as save_trace writes it) to a file that
    SGLang's --init-expert-location reads (torch.load / json by suffix, one key)."""
    import torch

    wl.save_trace(tmp_path / "expert_distribution_recorder.pt", trace)
    for name in ("init.json", "init.pt"):
        plan(capsys, tmp_path, tmp_path / "expert_distribution_recorder.pt", name,
             "--format", "sglang")  # fmt: skip
    want = fasteplb.rebalance_experts(trace.sum(axis=0), 24, 4, 2, 4)[0]
    doc = torch.load(tmp_path / "init.pt", weights_only=True, map_location="cpu")
    assert list(doc) == ["physical_to_logical_map"]
    np.testing.assert_array_equal(doc["physical_to_logical_map"].numpy(), want)
    doc = json.loads((tmp_path / "init.json").read_text())
    np.testing.assert_array_equal(np.array(doc["physical_to_logical_map"]), want)


def test_report_lines_and_totals(capsys, files, trace):
    plan(capsys, files, files / "trace.npy", "a.json", "--window", "3")
    code, out, err = run_cli(capsys, "report", "--load", files / "trace.npy", "--plan",
                             files / "a.json", "--old", files / "a.json")  # fmt: skip
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[1].split()[0] == "layer" and "copies" in lines[1]
    assert [line.split()[0] for line in lines[2:5]] == ["0", "1", "2"]
    weight = trace.sum(axis=0)
    phy2log = np.array(json.loads((files / "a.json").read_text())["phy2log"])
    rep = fasteplb.report(phy2log, weight, 24, 4, 2, 4)
    for i, line in enumerate(lines[2:5]):
        cells = line.split()
        assert float(cells[1]) == pytest.approx(rep["balancedness_per_layer"][i], abs=5e-5)
        assert int(cells[-1]) == 0  # no copies from a plan to itself
    assert lines[-1].startswith("total") and f"{rep['balancedness']:.4f}" in lines[-1]
    assert "expert copies from --old 0" in lines[-1]


def test_old_plan_needs_fewer_copies_than_fresh(capsys, tmp_path):
    steps = wl.generate("deepseek-v3-like", "mixtral-8x7b", 400, seed=3)
    wl.save_trace(tmp_path / "a.npy", steps[:200])
    wl.save_trace(tmp_path / "b.npy", steps[200:])
    args = ["--replicas", "12", "--gpus", "4"]
    for name, load, extra in [("a.json", "a.npy", []), ("fresh.json", "b.npy", []),
                              ("kept.json", "b.npy", ["--old", tmp_path / "a.json"])]:  # fmt: skip
        code, out, err = run_cli(capsys, "plan", "--load", tmp_path / load, *args, "--out",
                                 tmp_path / name, *extra)  # fmt: skip
        assert code == 0, err
    assert "expert copies from --old" in out
    a, fresh, kept = (_cli.read_plan(str(tmp_path / n))[0] for n in ("a.json", "fresh.json",
                                                                     "kept.json"))  # fmt: skip
    copies_fresh = int(fasteplb.moves(a, fresh, 4).sum())
    copies_kept = int(fasteplb.moves(a, kept, 4).sum())
    assert copies_kept < copies_fresh, (copies_kept, copies_fresh)
    # report counts the same copies.
    code, out, _ = run_cli(capsys, "report", "--load", tmp_path / "b.npy", "--plan",
                           tmp_path / "kept.json", "--old", tmp_path / "a.json")  # fmt: skip
    assert code == 0 and f"expert copies from --old {copies_kept}" in out
    # A model-wide budget caps the copies over all layers.
    budget = copies_kept // 2
    code, out, err = run_cli(capsys, "plan", "--load", tmp_path / "b.npy", *args, "--out",
                             tmp_path / "capped.json", "--old", tmp_path / "a.json",
                             "--max-moves-total", str(budget))  # fmt: skip
    assert code == 0, err
    capped = _cli.read_plan(str(tmp_path / "capped.json"))[0]
    assert 0 < int(fasteplb.moves(a, capped, 4).sum()) <= budget
    assert json.loads((tmp_path / "capped.json").read_text())["options"]["max_moves_total"] == (
        budget
    )


def test_report_png(capsys, files):
    pytest.importorskip("matplotlib")
    plan(capsys, files, files / "trace.npy", "a.json")
    code, out, err = run_cli(capsys, "report", "--load", files / "trace.npy", "--plan",
                             files / "a.json", "--png", files / "r.png")  # fmt: skip
    assert code == 0, err
    assert (files / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chunked_planning_is_identical(monkeypatch, trace):
    weight = np.concatenate([trace.sum(axis=0)] * 5) * np.arange(1, 16)[:, None]  # 15 layers
    whole = _cli.plan_layers(weight, (24, 4, 2, 4), {"refine": "local"}, None)
    monkeypatch.setattr(_cli, "CHUNK_SLOTS", 24 * 4)  # 4 layers per chunk
    chunked = _cli.plan_layers(weight, (24, 4, 2, 4), {"refine": "local"}, None)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)
    old = whole[0][::-1].copy()
    for a, b in zip(_cli.plan_layers(weight, (24, 4, 2, 4), {}, old),
                    fasteplb.rebalance_experts(weight, 24, 4, 2, 4, old_phy2log=old)):  # fmt: skip
        np.testing.assert_array_equal(a, b)


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_on_a_terminal_only_after_the_delay():
    import time

    tty = _Tty()
    with _cli.Progress("planning", 10, unit="layers", stream=tty, delay=0.0,
                       interval=0.01) as bar:  # fmt: skip
        bar.update(5)
        time.sleep(0.1)
    text = tty.getvalue()
    assert "planning [" in text and "5/10 layers" in text and text.endswith("\r")
    quick = _Tty()
    with _cli.Progress("loading", stream=quick, delay=5.0):
        pass
    assert quick.getvalue() == ""  # work under the delay shows nothing
    pipe = io.StringIO()  # not a terminal
    with _cli.Progress("loading", stream=pipe, delay=0.0, interval=0.01):
        time.sleep(0.05)
    assert pipe.getvalue() == ""


def test_broken_pipe_exits_quietly(tmp_path):
    rng = np.random.default_rng(1)
    wl.save_trace(tmp_path / "many.npy", rng.integers(0, 100, (3000, 16)))
    assert main(["plan", "--load", str(tmp_path / "many.npy"), "--replicas", "24", "--gpus",
                 "4", "--out", str(tmp_path / "many.json")]) == 0  # fmt: skip
    cmd = [sys.executable, "-m", "fasteplb", "report", "--load", str(tmp_path / "many.npy"),
           "--plan", str(tmp_path / "many.json")]  # fmt: skip
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        first = proc.stdout.readline()  # then close the pipe, as `| head -1` does
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0, err
    assert first.startswith(b"plan ") and err == ""


# ----------------------------------------------------------------------------------------
# User errors: exit status 2, one line on stderr, no traceback
# ----------------------------------------------------------------------------------------


def plan_error(capsys, files, *args, match=None, load="trace.npy", out="out.json"):
    err = assert_user_error(capsys, "plan", "--load", files / load, "--out", files / out,
                            *args, match=match)  # fmt: skip
    assert not (files / out).exists()  # nothing written on an error
    return err


@pytest.mark.parametrize("args, match", [
    (["--replicas", "24", "--gpus", "5"], r"--replicas \(24\) must be divisible by --gpus \(5\)"),
    (["--replicas", "24", "--gpus", "4", "--nodes", "3"], r"--gpus \(4\) must be divisible"),
    (["--replicas", "24", "--gpus", "4", "--groups", "3"],
     r"expert count \(16\) must be divisible by --groups \(3\)"),
    (["--replicas", "8", "--gpus", "4"], r"--replicas \(8\) must be >= the 16 experts"),
    (["--replicas", "abc", "--gpus", "4"], r"argument --replicas: must be an integer"),
    (["--replicas", "24", "--gpus", "0"], r"argument --gpus: must be >= 1"),
    (["--replicas", "24", "--gpus", "-4"], r"--gpus"),
    (["--replicas", "24.5", "--gpus", "4"], r"must be an integer"),
    (["--replicas", str(1 << 23), "--gpus", "4"], r"--replicas \(8388608\) must be <= \d+"),
    (["--replicas", "24", "--gpus", "4", "--window", "0"], r"--window: must be >= 1"),
    (["--replicas", "24", "--gpus", "4", "--window", "7"], r"--window 7 exceeds the 6 steps"),
    (["--replicas", "24", "--gpus", "4", "--threads", "x"], r"--threads"),
    (["--replicas", "24", "--gpus", "4", "--refine", "best"], r"invalid choice: 'best'"),
    (["--replicas", "24", "--gpus", "4", "--max-moves", "3"], r"need --old"),
    (["--replicas", "24", "--gpus", "4", "--max-moves-total", "3"], r"need --old"),
    (["--replicas", "24", "--gpus", "4", "--format", "yaml"], r"unknown format 'yaml'"),
    (["--replicas", "24", "--gpus", "4", "--format", "deepseek"],
     r"--format deepseek is written as \.pt or \.npz"),
    (["--replicas", "24", "--gpus", "4", "--bogus"], r"unrecognized arguments: --bogus"),
    (["--gpus", "4"], r"required: --replicas"),
])  # fmt: skip
def test_plan_usage_errors(args, match, capsys, files):
    plan_error(capsys, files, *args, match=match)


def test_missing_and_unreadable_inputs(capsys, files):
    ok = ["--replicas", "24", "--gpus", "4"]
    plan_error(capsys, files, *ok, load="nope.npy", match=r"'.*nope\.npy': no such file")
    (files / "empty").mkdir()
    plan_error(capsys, files, *ok, load="empty", match=r"empty")
    (files / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    plan_error(capsys, files, *ok, load="garbage.npy", match=r"garbage\.npy")
    (files / "bad.json").write_text("{not json")
    plan_error(capsys, files, *ok, load="bad.json", match=r"not valid JSON")
    (files / "other.json").write_text('{"hello": 1}')
    plan_error(capsys, files, *ok, load="other.json", match=r"unknown JSON trace")
    (files / "loads.txt").write_text("1 2 3")
    plan_error(capsys, files, *ok, load="loads.txt", match=r"unknown trace format")


def test_bad_shapes_and_values(capsys, files):
    ok = ["--replicas", "24", "--gpus", "4"]
    np.save(files / "flat.npy", np.ones(16))
    plan_error(capsys, files, *ok, load="flat.npy", match=r"must be \[steps, layers, experts\]")
    np.save(files / "nan.npy", np.full((3, 16), np.nan))
    plan_error(capsys, files, *ok, load="nan.npy", match=r"finite and >= 0")
    np.save(files / "neg.npy", -np.ones((3, 16)))
    plan_error(capsys, files, *ok, load="neg.npy", match=r"finite and >= 0")


def test_unwritable_outputs_fail_before_loading(capsys, files, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the load file was read before the output path was checked")

    monkeypatch.setattr(wl, "load_trace", never)
    ok = ["--replicas", "24", "--gpus", "4"]
    plan_error(capsys, files, *ok, out="missing_dir/plan.json", match=r"does not exist")
    (files / "adir.json").mkdir()
    assert_user_error(capsys, "plan", "--load", files / "trace.npy", *ok, "--out",
                      files / "adir.json", match=r"is a directory")  # fmt: skip
    (files / "afile").write_text("x")
    plan_error(capsys, files, *ok, out="afile/plan.json", match=r"does not exist")
    plan_error(capsys, files, *ok, "--format", "trtllm", out="plan.json",
               match=r"trtllm is written as \.yaml or \.yml or \.npz")  # fmt: skip


def test_bad_old_plans(capsys, files, trace):
    ok = ["--replicas", "24", "--gpus", "4"]
    plan_error(capsys, files, *ok, "--old", files / "nope.json", match=r"--old .*no such file")
    np.save(files / "wide.npy", np.zeros((3, 28), dtype=np.int64))
    plan_error(capsys, files, *ok, "--old", files / "wide.npy",
               match=r"\[3 layers, 28 slots\]; this plan is \[3 layers, 24 slots\]")  # fmt: skip
    np.save(files / "ids.npy", np.full((3, 24), 99, dtype=np.int64))  # experts are 0..15
    plan_error(capsys, files, *ok, "--old", files / "ids.npy", match=r"--old must hold expert ids")
    (files / "noplan.json").write_text('{"a": 1}')
    plan_error(capsys, files, *ok, "--old", files / "noplan.json", match=r"no plan in it")
    plan_error(capsys, files, *ok, "--old", files / "trace.npy", match=r"\[layers, slots\]")
    plan_error(capsys, files, *ok, "--old", files / "trace.json", "--refine", "swap",
               match=r"--old works with --refine local or none")  # fmt: skip
    plan_error(capsys, files, *ok, "--old", files / "trace.json", "--min-gain", "1.5",
               match=r"--min-gain must be in \[0, 1\)")  # fmt: skip


def test_report_errors(capsys, files, trace):
    plan(capsys, files, files / "trace.npy", "a.json")
    np.save(files / "bare.npy", np.array(json.loads((files / "a.json").read_text())["phy2log"]))
    load = ["--load", files / "trace.npy"]
    assert_user_error(capsys, "report", *load, "--plan", files / "nope.json",
                      match=r"--plan .*no such file")  # fmt: skip
    assert_user_error(capsys, "report", *load, "--plan", files / "bare.npy",
                      match=r"does not record the GPU count; pass --gpus")  # fmt: skip
    assert_user_error(capsys, "report", *load, "--plan", files / "bare.npy", "--gpus", "5",
                      match=r"slot count \(24\) must be divisible by --gpus \(5\)")  # fmt: skip
    np.save(files / "two.npy", trace[:, :2])
    assert_user_error(capsys, "report", "--load", files / "two.npy", "--plan",
                      files / "a.json", match=r"--load has 2 layers, --plan .* has 3")  # fmt: skip
    np.save(files / "few.npy", trace[:, :, :8])
    assert_user_error(capsys, "report", "--load", files / "few.npy", "--plan",
                      files / "a.json", match=r"expert ids 0\.\.15, but --load has 8")  # fmt: skip
    assert_user_error(capsys, "report", *load, "--plan", files / "a.json", "--png",
                      files / "r.jpg", match=r"must end in \.png")  # fmt: skip
    assert_user_error(capsys, "report", *load, "--plan", files / "a.json", "--png",
                      files / "no" / "r.png", match=r"does not exist")  # fmt: skip
    assert_user_error(capsys, "report", *load, match=r"required: --plan")


def test_report_png_without_matplotlib(capsys, files, monkeypatch):
    plan(capsys, files, files / "trace.npy", "a.json")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    assert_user_error(capsys, "report", "--load", files / "trace.npy", "--plan",
                      files / "a.json", "--png", files / "r.png",
                      match=r"--png needs matplotlib \(pip install matplotlib\)")  # fmt: skip


def test_pt_files_without_torch(capsys, files, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails
    ok = ["--replicas", "24", "--gpus", "4"]
    plan_error(capsys, files, *ok, "--format", "vllm", out="v.pt",
               match=r"--format vllm as \.pt needs torch \(pip install torch\)")  # fmt: skip
    (files / "dump.pt").write_bytes(b"PK")
    plan_error(capsys, files, *ok, load="dump.pt", match=r"needs torch")


def test_unknown_command(capsys):
    assert_user_error(capsys, "frob", match=r"invalid choice: 'frob'")


@pytest.mark.parametrize("args", [
    ["plan", "--load", "nope.npy", "--replicas", "24", "--gpus", "4", "--out", "x.json"],
    ["plan", "--replicas", "x"],
    ["report", "--load", "nope.npy", "--plan", "nope.json"],
    ["bench", "--windows", "1", "--configs", "Mixtral"],
])  # fmt: skip
def test_errors_in_a_real_process(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fasteplb", *args], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("fasteplb ")


# ----------------------------------------------------------------------------------------
# bench: what it downloads, --offline
# ----------------------------------------------------------------------------------------


def test_bench_says_what_it_downloads(tmp_path, capsys):
    cache = tmp_path / "cache"
    _bench.announce_downloads(str(cache), offline=False, download=True)
    err = capsys.readouterr().err
    assert "vllm 0.33.0 (about 336 MB)" in err and "sglang 0.5.23 (about 39 MB)" in err
    assert "375 MB in all" in err and str(cache / "wheels") in err
    # A wheel in the cache is not downloaded again.
    (cache / "wheels").mkdir(parents=True)
    (cache / "wheels" / "vllm-0.33.0-py3-none-any.whl").write_bytes(b"")
    assert [d for d, _, _ in _bench.pending_downloads(str(cache))] == ["sglang"]
    _bench.announce_downloads(str(cache), offline=False, download=False)
    assert capsys.readouterr().err == ""  # --no-download: nothing to announce


def test_bench_offline_without_the_cache(tmp_path, capsys, monkeypatch):
    from fasteplb._bench import peers as _peers

    def refuse(*args, **kwargs):
        raise AssertionError("--offline downloaded")

    monkeypatch.setattr(_peers, "_download", refuse)
    err = assert_user_error(capsys, "bench", "--offline", "--peers-cache", tmp_path / "c",
                            "--configs", "Mixtral", match=r"--offline: vllm 0\.33\.0")  # fmt: skip
    assert "not in the cache" in err and "--no-download" in err
