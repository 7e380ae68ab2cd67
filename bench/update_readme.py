"""Copy the benchmark tables from bench/RESULTS.md and bench/QUALITY.md into README.md.

    python bench/update_readme.py
"""

from __future__ import annotations

import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent
README = HERE.parent / "README.md"

# QUALITY.md columns kept in the README: configuration, k, balancedness per mode and bound,
# time per mode, avoidable co-location for none and local.
QUALITY_COLUMNS = (0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14)


def core_table() -> str:
    text = (HERE / "RESULTS.md").read_text()
    return text.split("\n\n", 2)[2].strip()


def quality_table() -> str:
    lines = (HERE / "QUALITY.md").read_text().splitlines()
    machine = next(line for line in lines if line.startswith("Machine:"))
    start = next(i for i, line in enumerate(lines) if line.startswith("| configuration | k |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = line.strip("|").split("|")
        rows.append("|" + "|".join(cells[i] for i in QUALITY_COLUMNS) + "|")
    return machine + "\n\n" + "\n".join(rows)


def replace(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name} -->\n).*?(\n<!-- /{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- {name} --> block")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def main() -> None:
    text = README.read_text()
    text = replace(text, "bench-core", core_table())
    text = replace(text, "bench-quality", quality_table())
    README.write_text(text)


if __name__ == "__main__":
    main()
