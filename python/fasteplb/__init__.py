"""fasteplb: a native Expert Parallelism Load Balancer for Mixture-of-Experts serving.

A drop-in for DeepSeek's ``eplb.py``::

    import fasteplb as eplb
    phy2log, log2phy, logcnt = eplb.rebalance_experts(weight, num_replicas, num_groups,
                                                      num_nodes, num_gpus)

``fasteplb.workloads`` (synthetic expert-load traces, trace files, statistics),
``fasteplb.reference`` (the pure-Python planner) and ``fasteplb.integrations`` (the serving
engines' adapters) are imported on first use: ``import fasteplb`` loads the planner and the
metrics only.
"""

import importlib as _importlib
from typing import TYPE_CHECKING

from . import _version
from ._api import (
    balanced_packing,
    forecast_load,
    history_candidates,
    rebalance_experts,
    replicate_experts,
)
from ._planner import Planner
from .metrics import (
    balancedness,
    colocated,
    gpu_loads,
    lower_bound,
    moved_bytes,
    moves,
    report,
)

__version__ = _version.version()

__all__ = [
    "Planner",
    "__version__",
    "balanced_packing",
    "balancedness",
    "colocated",
    "forecast_load",
    "gpu_loads",
    "history_candidates",
    "lower_bound",
    "moved_bytes",
    "moves",
    "rebalance_experts",
    "replicate_experts",
    "report",
]

# Sub-modules imported on first attribute access (PEP 562), so that ``import fasteplb`` stays
# as light as the planner: ``fasteplb.workloads.generate(...)`` works after a plain
# ``import fasteplb``. They are left out of ``__all__``, which lists the drop-in API of
# ``import fasteplb as eplb``: ``from fasteplb import *`` then imports none of them. Type
# checkers see plain imports (and no module ``__getattr__``, which would make every
# misspelt attribute of fasteplb pass).
_SUBMODULES = ("integrations", "reference", "workloads")

if TYPE_CHECKING:
    from . import integrations as integrations
    from . import reference as reference
    from . import workloads as workloads
else:

    def __getattr__(name: str) -> object:
        if name in _SUBMODULES:
            return _importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, *_SUBMODULES})
