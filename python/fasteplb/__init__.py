"""fasteplb: a native Expert Parallelism Load Balancer for Mixture-of-Experts serving.

A drop-in for DeepSeek's ``eplb.py``::

    import fasteplb as eplb
    phy2log, log2phy, logcnt = eplb.rebalance_experts(weight, num_replicas, num_groups,
                                                      num_nodes, num_gpus)
"""

from ._api import balanced_packing, rebalance_experts, replicate_experts
from .metrics import (
    balancedness,
    colocated,
    gpu_loads,
    lower_bound,
    moved_bytes,
    moves,
    report,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "balanced_packing",
    "balancedness",
    "colocated",
    "gpu_loads",
    "lower_bound",
    "moved_bytes",
    "moves",
    "rebalance_experts",
    "replicate_experts",
    "report",
]
