"""The C++ core's layout: one file per algorithm stage, includes strictly bottom-up.

Each header has a level; a file may include only headers of a lower level (a source also its
own header), so no stage depends on a later one and the include graph has no cycles. A new
file must be given its level here: that is where a reviewer sees which stage it belongs to.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

# header -> level; the stages of DeepSeek's algorithm run 5 (split) .. 3 (pack) .. 2 (replicate)
LEVELS = {
    "fasteplb/options.hpp": 0,  # Refine, Options, Migration
    "fasteplb/fpenv.hpp": 0,  # IEEE floating-point guard
    "fasteplb/interrupt.hpp": 0,  # Ctrl-C polling
    "fasteplb/parallel.hpp": 1,  # the worker pool over layers
    "fasteplb/input.hpp": 1,  # input snapshots (any dtype -> float64)
    "fasteplb/detail/common.hpp": 1,  # Item, Quotient, tie order, Shape
    "fasteplb/detail/simd.hpp": 1,  # CPU-specific kernels
    "fasteplb/checks.hpp": 2,  # validation and supported sizes
    "fasteplb/detail/sort.hpp": 2,  # ranked sort and merges
    "fasteplb/detail/replicate.hpp": 2,  # stage 2: replica counts
    "fasteplb/detail/history.hpp": 2,  # forecasting the next window from past ones
    "fasteplb/detail/packing.hpp": 2,
    "fasteplb/detail/budget.hpp": 2,  # a model-wide copy budget over the layers  # stage 3's state
    "fasteplb/detail/local_search.hpp": 3,  # stage 3: the local search
    "fasteplb/detail/pack.hpp": 4,  # stage 3: LPT, seed swaps, refine="local"
    "fasteplb/detail/split.hpp": 5,  # stage 1: groups -> nodes
    "fasteplb/detail/layer.hpp": 6,  # one fresh layer
    "fasteplb/detail/migrate.hpp": 7,  # one layer from its old placement
    "fasteplb/eplb.hpp": 8,  # the public entry points
}
LEVEL_OF_SOURCE = {"bindings.cpp": 9}  # sources without a same-name header
MAX_LINES = 600

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def sources():
    return sorted(p for p in CSRC.rglob("*") if p.suffix in (".hpp", ".cpp"))


def name(path):
    return path.relative_to(CSRC).as_posix()


def level(rel):
    if rel in LEVELS:
        return LEVELS[rel]
    if rel in LEVEL_OF_SOURCE:
        return LEVEL_OF_SOURCE[rel]
    if rel.endswith(".cpp"):
        return LEVELS.get(rel[: -len(".cpp")] + ".hpp")
    return None


def test_every_file_has_a_level():
    missing = [name(p) for p in sources() if level(name(p)) is None]
    assert not missing, f"give these files a level in tests/test_layout.py: {missing}"


@pytest.mark.parametrize("path", sources(), ids=name)
def test_includes_only_lower_levels(path):
    rel = name(path)
    own_header = rel[: -len(".cpp")] + ".hpp" if rel.endswith(".cpp") else None
    for inc in INCLUDE.findall(path.read_text()):
        assert (CSRC / inc).exists(), f"{rel} includes {inc}, which is not under csrc/"
        if inc == own_header:
            continue
        assert level(inc) < level(rel), (
            f"{rel} (level {level(rel)}) includes {inc} (level {level(inc)}): includes must "
            "run bottom-up"
        )


def test_the_stages_are_named():
    detail = {p.name for p in (CSRC / "fasteplb" / "detail").iterdir()}
    for stage in ("common", "sort", "split", "replicate", "pack", "layer", "migrate"):
        assert f"{stage}.hpp" in detail, stage
    # each detail source with a same-name header, in namespace fasteplb::detail
    for p in (CSRC / "fasteplb" / "detail").glob("*.cpp"):
        assert p.with_suffix(".hpp").exists(), p.name
    for p in (CSRC / "fasteplb" / "detail").iterdir():
        assert "namespace fasteplb::detail {" in p.read_text(), p.name


def test_core_has_no_python_and_no_long_files():
    for p in sources():
        text = p.read_text()
        lines = text.count("\n")
        assert lines <= MAX_LINES, f"{name(p)} has {lines} lines (at most {MAX_LINES})"
        if name(p) != "bindings.cpp":
            assert "pybind11" not in text and "Python.h" not in text, name(p)


def test_every_core_source_is_built():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for p in (CSRC / "fasteplb").rglob("*.cpp"):
        assert f"csrc/{name(p)}" in cmake, f"{name(p)} is not in CMakeLists.txt"


def test_include_check_catches_an_upward_include(tmp_path, monkeypatch):
    # The check itself: a stage header that included a later stage would fail.
    fake = tmp_path / "fasteplb" / "detail"
    fake.mkdir(parents=True)
    (fake / "sort.hpp").write_text('#include "fasteplb/detail/layer.hpp"\n')
    (fake / "layer.hpp").write_text("\n")
    monkeypatch.setattr(__import__(__name__), "CSRC", tmp_path)
    with pytest.raises(AssertionError, match="bottom-up"):
        test_includes_only_lower_levels(fake / "sort.hpp")


def test_style_tools_pinned_once():
    # CI installs pyproject's `lint` pins; .pre-commit-config.yaml must run the same versions.
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(p.split("==") for p in pins["optional-dependencies"]["lint"])
    config = (ROOT / ".pre-commit-config.yaml").read_text()
    assert f"ruff-pre-commit\n    rev: v{pins['ruff']}" in config
    assert f"mirrors-clang-format\n    rev: v{pins['clang-format']}" in config
