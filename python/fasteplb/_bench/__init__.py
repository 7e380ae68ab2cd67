"""Benchmarks and the engines' own planners, for comparison; private, and never imported by
``import fasteplb``.

- ``peers``: the serving engines' EPLB policy files, loaded from their published wheels (and
  the engine files around them, for the integration tests);
- ``engines``: fasteplb against those planners on realistic workloads (configurations,
  settings, the run);
- ``tables``: its markdown report and the ``<!-- name -->`` sections of bench/*.md and
  README.md;
- ``plots``: its figures;
- ``cli``: ``python -m fasteplb bench`` and the argument parsing of the ``bench/*.py``
  scripts.

Importing this package imports none of them.
"""
