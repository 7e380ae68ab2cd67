"""The command line: python -m fasteplb / the fasteplb console script."""

import re
import shutil
import subprocess
import sys

import fasteplb
import pytest
from fasteplb.__main__ import main


def test_demo_runs_and_reports_identical_plans():
    proc = subprocess.run([sys.executable, "-m", "fasteplb", "demo", "--rounds", "1"],
                          capture_output=True, text=True, timeout=120)
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


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_demo_in_process(capsys):
    assert main(["demo", "--rounds", "1"]) == 0
    assert "same plan" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("fasteplb") is None, reason="console script not on PATH")
def test_console_script_version():
    proc = subprocess.run(["fasteplb", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"fasteplb {fasteplb.__version__}"
