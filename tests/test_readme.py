"""The README's quickstart runs as written and returns a valid plan; its first commands install
no more than they need."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest
from helpers import check_plan

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_and_plans():
    torch = pytest.importorskip("torch")
    text = README.read_text()
    block = re.search(r"## Quickstart \(torch\)\s+```python\n(.*?)```", text, re.S)
    assert block, "README lost its quickstart"
    code = block.group(1)
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) == 3  # a plan from a torch tensor in three lines of code
    scope: dict = {}
    exec(compile(code, "README quickstart", "exec"), scope)
    phy2log, log2phy, logcnt = scope["phy2log"], scope["log2phy"], scope["logcnt"]
    assert all(
        isinstance(t, torch.Tensor) and t.dtype == torch.int64 for t in (phy2log, log2phy, logcnt)
    )
    check_plan(
        scope["weight"].numpy(), phy2log.numpy(), log2phy.numpy(), logcnt.numpy(), 288, 8, 4, 32
    )


def test_setup_commands_come_first():
    lines = README.read_text().splitlines()
    commands = [line for line in lines[:8] if line.startswith("pip install")]
    assert commands == [
        "pip install . && python -m fasteplb demo",
        'pip install ".[test]" && pytest',
    ]


def test_first_command_needs_numpy_only():
    """`pip install .` installs numpy and nothing else, and the demo runs with torch made
    unimportable (as without torch) and reports identical plans."""
    pyproject = (README.parent / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.M | re.S)
    assert deps and re.findall(r'"([^"]+)"', deps.group(1)) == ["numpy>=1.21"]
    code = (
        "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError
        "from fasteplb.__main__ import main\n"
        "rc = main(['demo', '--rounds', '1'])\n"
        "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert re.findall(r"^(none|swap)\s+.*\s(yes|NO)$", proc.stdout, re.M) == [
        ("none", "yes"),
        ("swap", "yes"),
    ]
