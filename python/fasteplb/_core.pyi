"""Private native core. Use the fasteplb package API instead."""

import numpy as np
import numpy.typing as npt

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]

def rebalance_experts(
    weight: _F64,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    refine: str = "local",
    swap_rounds: int = 20,
    num_threads: int = 0,
    old_phy2log: _I64 | None = None,
    max_moves: int = -1,
    min_gain: float = 0.0,
) -> tuple[_I64, _I64, _I64]: ...
def balanced_packing(
    weight: _F64,
    num_packs: int,
    refine: str = "local",
    swap_rounds: int = 20,
    num_threads: int = 0,
) -> tuple[_I64, _I64]: ...
def replicate_experts(weight: _F64, num_phy: int, num_threads: int = 0) -> tuple[_I64, _I64, _I64]: ...
