"""Command lines: ``python -m fasteplb bench`` (``add_arguments`` and ``cli``), and the
argument parsing that the ``bench/*.py`` scripts share (``script_parser``).

Every option of the engines benchmark is defined once, in ``_OPTIONS``: ``fasteplb bench``
takes all of them, ``bench/bench_engines.py`` the few it names. The scripts' ``--write`` and
``--quick`` are spelled the same way everywhere, each script saying what they mean for it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Optional

from .. import workloads as wl
from .engines import (
    CONFIGS,
    ENGINES,
    FULL,
    QUICK,
    Config,
    Settings,
    announce_downloads,
    load_peers,
    run,
)
from .plots import plot
from .tables import markdown

__all__ = ["add_arguments", "cli", "script_parser", "write_json"]

# The options of the engines benchmark, in the order ``fasteplb bench --help`` lists them:
# name -> add_argument's keyword arguments.
_OPTIONS: dict[str, dict[str, Any]] = {
    "--quick": dict(
        action="store_true",
        help="6 configurations, one profile each, 3 windows per case (under a minute)",
    ),
    "--json": dict(metavar="PATH", help="write the rows as a JSON list"),
    "--markdown": dict(metavar="PATH", help="write the markdown report"),
    "--plots": dict(metavar="DIR", help="write the PNG plots (needs matplotlib)"),
    "--peers-cache": dict(
        metavar="DIR",
        help="cache of the engines' wheels (default: fasteplb._bench.peers.default_cache_dir())",
    ),
    "--no-download": dict(
        action="store_true",
        help="never download an engine wheel; skip peers not in the cache",
    ),
    "--offline": dict(
        action="store_true",
        help="use only the cache: stop with an error (exit 2) if an engine wheel is missing",
    ),
    "--peers-root": dict(
        metavar="DIR",
        help="read the peers' policy files from DIR (wheel layout); no download",
    ),
    "--configs": dict(
        metavar="NAMES",
        help="comma-separated substrings of configuration names (default: all)",
    ),
    "--profiles": dict(
        metavar="NAMES",
        help="comma-separated workload profiles for every configuration",
    ),
    "--windows": dict(type=int, metavar="N", help="windows per case (>= 2)"),
    "--window-steps": dict(type=int, metavar="N", help="steps per window (100)"),
    "--seed": dict(type=int, default=0, help="workload seed (0)"),
    "--list": dict(action="store_true", help="list the configurations and exit"),
}


def add_options(p: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """Adds the engines benchmark's options ``names`` (keys of ``_OPTIONS``) to ``p``."""
    unknown = [n for n in names if n not in _OPTIONS]
    if unknown:
        raise ValueError(f"unknown bench options {unknown}; expected some of {list(_OPTIONS)}")
    for name in names:
        p.add_argument(name, **_OPTIONS[name])


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m fasteplb bench``: all of ``_OPTIONS``."""
    add_options(p, list(_OPTIONS))


def script_parser(
    doc: Optional[str],
    *,
    write: Optional[str] = None,
    quick: Optional[str] = None,
    options: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """The argument parser of a ``bench/*.py`` script.

    Parameters:
        doc: the script's docstring; its first line is the description
        write: the file that ``--write`` stores the results in (no ``--write`` when None)
        quick: what ``--quick`` does in this script, its help (no ``--quick`` when None)
        options: options of the engines benchmark (keys of ``_OPTIONS``), with the same
            meaning and defaults as in ``python -m fasteplb bench``
    """
    description = doc.strip().splitlines()[0] if doc and doc.strip() else None
    parser = argparse.ArgumentParser(description=description)
    if write is not None:
        parser.add_argument("--write", action="store_true", help=f"write {write}")
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    add_options(parser, options)
    return parser


def write_json(path: str, rows: list[dict[str, Any]]) -> None:
    """The benchmark's rows as an indented JSON list, as ``--json PATH`` writes them."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")


def settings_from(args: argparse.Namespace) -> Settings:
    s = QUICK if args.quick else FULL
    if args.windows is not None:
        if args.windows < 2:
            raise SystemExit("--windows must be >= 2 (plans are scored on the next window)")
        s = replace(s, windows=args.windows)
    if args.window_steps is not None:
        if args.window_steps < 1:
            raise SystemExit("--window-steps must be >= 1")
        s = replace(s, window_steps=args.window_steps)
    return replace(s, seed=args.seed)


def configs_from(spec: Optional[str]) -> list[Config]:
    if not spec:
        return list(CONFIGS)
    wanted = [w.strip().lower() for w in spec.split(",") if w.strip()]
    chosen = [c for c in CONFIGS if any(w in c.name.lower() for w in wanted)]
    if not chosen:
        raise SystemExit(
            f"--configs {spec!r} matches none of: {', '.join(c.name for c in CONFIGS)}"
        )
    return chosen


def profiles_from(spec: Optional[str]) -> Optional[list[str]]:
    if not spec:
        return None
    chosen = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in chosen if p not in wl.PROFILES]
    if bad:
        raise SystemExit(f"unknown profiles {bad}; valid: {', '.join(wl.PROFILES)}")
    return chosen


def cli(args: argparse.Namespace) -> int:
    """``python -m fasteplb bench``: run, print the markdown report, write what was asked."""
    if args.list:
        for c in CONFIGS:
            print(f"{c.name}: {c.model} {c.sizes}; profiles {', '.join(c.profiles)}"
                  + (f" (+ full: {', '.join(c.full_profiles)})" if c.full_profiles else ""))  # fmt: skip
        return 0
    settings = settings_from(args)
    configs = configs_from(args.configs)
    profiles = profiles_from(args.profiles)
    offline = getattr(args, "offline", False)
    download = not args.no_download and not offline and args.peers_root is None
    if args.peers_root is None:
        announce_downloads(args.peers_cache, offline=offline, download=download)
    peers, skipped = load_peers(
        ENGINES, args.peers_cache, download=download, root=args.peers_root, log=sys.stdout
    )
    result = run(configs, settings, profiles=profiles, peers=peers, skipped=skipped)
    plots_rel = None
    if args.plots:
        try:
            plot(result, args.plots)
        except ImportError:
            print("no plots: matplotlib is not installed (pip install matplotlib)")
        else:
            base = os.path.dirname(os.path.abspath(args.markdown)) if args.markdown else os.getcwd()
            plots_rel = os.path.relpath(os.path.abspath(args.plots), base)
    report = markdown(result, plots_dir=plots_rel)
    print(report)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(report)
    if args.json:
        write_json(args.json, result.rows)
    print(f"bench: {len(result.rows)} rows in {result.wall_s:.1f} s", file=sys.stderr)
    return 0
