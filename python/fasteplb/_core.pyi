"""Private native core. Use the fasteplb package API instead.

``weight`` is a 2-D array of any real or integer dtype of 1 to 8 bytes, in native byte order
and any strides (``bfloat16=True``: int16/uint16 elements holding bfloat16 bits). Each call
copies its inputs once before planning, so the caller may keep writing into them.
"""

import numpy as np
import numpy.typing as npt

_I64 = npt.NDArray[np.int64]

def rebalance_experts(
    weight: npt.NDArray[np.generic],
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
    bfloat16: bool = False,
    max_moves_total: int = -1,
) -> tuple[_I64, _I64, _I64]: ...
def balanced_packing(
    weight: npt.NDArray[np.generic],
    num_packs: int,
    refine: str = "local",
    swap_rounds: int = 20,
    num_threads: int = 0,
    bfloat16: bool = False,
) -> tuple[_I64, _I64]: ...
def replicate_experts(
    weight: npt.NDArray[np.generic], num_phy: int, num_threads: int = 0, bfloat16: bool = False
) -> tuple[_I64, _I64, _I64]: ...
def forecast_load(
    weight: npt.NDArray[np.generic],
    history: str = "auto",
    alpha: float = 0.5,
    window: int = 8,
    z: float = 1.0,
    replays: int = 8,
    num_threads: int = 0,
    bfloat16: bool = False,
) -> tuple[npt.NDArray[np.float64], int]: ...
def history_candidates() -> list[tuple[str, float, int, float]]: ...
def _last_pool_size() -> int: ...
