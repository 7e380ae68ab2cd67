"""The README's quickstart runs as written and returns a valid plan."""

from __future__ import annotations

import pathlib
import re

import torch
from helpers import check_plan

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_and_plans():
    text = README.read_text()
    block = re.search(r"## Quickstart \(torch\)\s+```python\n(.*?)```", text, re.S)
    assert block, "README lost its quickstart"
    code = block.group(1)
    assert len(code.strip().splitlines()) == 3  # a plan from a torch tensor in three lines
    scope: dict = {}
    exec(compile(code, "README quickstart", "exec"), scope)
    phy2log, log2phy, logcnt = scope["phy2log"], scope["log2phy"], scope["logcnt"]
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.int64
               for t in (phy2log, log2phy, logcnt))
    check_plan(scope["weight"].numpy(), phy2log.numpy(), log2phy.numpy(), logcnt.numpy(),
               288, 8, 4, 32)


def test_setup_commands_come_first():
    lines = README.read_text().splitlines()
    commands = [line for line in lines[:8] if line.startswith("pip install")]
    assert commands == [
        'pip install ".[torch]" && python -m fasteplb demo',
        'pip install ".[test]" && pytest',
    ]
