"""fasteplb plans in TensorRT-LLM's layouts.

TensorRT-LLM's MoE load balancer is flat (no nodes or groups: plan with ``num_nodes=1``,
``num_groups=1``, or any grouping, since only the slot order matters here). Checked against
NVIDIA/TensorRT-LLM:

- ``cpp/tensorrt_llm/kernels/moeLoadBalance/moeLoadBalanceCommon.h`` (``MoePlacementInfo``)
  and ``cpp/tensorrt_llm/runtime/moeLoadBalancer/moeLoadBalancer.cpp``
  (``prepareGpuPlacementInfo``, ``setInitialWeightAssignments``): the GPU placement is CSR,
  not padded: ``expertReplicaCount[E]``; ``expertReplicaStartOffset[E]``, the exclusive
  prefix sum of the counts in expert order; ``globalSlotIds[epSize * slotCountPerRank]``,
  expert ``e``'s global slots (``rank * slotCountPerRank + local slot``, ascending) at
  ``[start[e], start[e] + count[e])``. The runtime keeps them as C ``int`` (int32).
- ``tensorrt_llm/llmapi/llm_args.py`` (``MoeLoadBalancerConfig``: fields ``num_slots``,
  ``initial_global_assignments: Dict[int, List[int]]``, ``layer_updates_per_iter``;
  ``get_layer_initial_global_assignments`` requires ``num_slots`` entries per layer) and
  ``TorchLlmArgs.validate_load_balancer`` (a ``moe_config.load_balancer`` string is a YAML
  file read with ``yaml.safe_load`` into ``MoeLoadBalancerConfig(**dict)``);
  ``examples/wide_ep/ep_load_balancer/generate_eplb_config.py`` writes that YAML: per model
  layer index, the expert of every global slot, rank-major, which is fasteplb's GPU-major
  ``phy2log`` row as is.

MoE layers are keyed by their model layer index: DeepSeek-V3/R1's MoE layers start at
``first_k_dense_replace`` (3), so pass ``first_layer=3`` for a plan of those 58 layers.
"""

from __future__ import annotations

import os
from typing import Any, Union

import numpy as np

from . import _common

__all__ = [
    "initial_global_assignments",
    "load_balancer_config",
    "save_load_balancer_config",
    "to_csr",
]

_PathLike = Union[str, "os.PathLike[str]"]


def _plan(phy2log: Any, num_logical: Any = None) -> np.ndarray:
    arr = np.asarray(_common.host_array(phy2log))
    if arr.dtype.kind not in "iu":
        raise TypeError(f"phy2log must hold integers, got dtype {arr.dtype}")
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"phy2log must be a non-empty [layers, slots] array, got {arr.shape}")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise ValueError("phy2log must hold expert ids >= 0")
    if num_logical is not None:
        if (arr >= num_logical).any():
            raise ValueError(
                f"phy2log must hold expert ids < num_logical ({num_logical}), found "
                f"{int(arr.max())}"
            )
        for layer, row in enumerate(arr):
            missing = np.flatnonzero(np.bincount(row, minlength=num_logical) == 0)
            if missing.size:
                raise ValueError(
                    f"phy2log layer {layer} lacks expert {int(missing[0])}: TensorRT-LLM "
                    "routes every expert to one of its replicas"
                )
    return arr


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def to_csr(phy2log: Any, num_logical: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runtime's ``MoePlacementInfo`` of each layer of a plan.

    Args:
        phy2log: [L, P] (GPU-major: rank ``r`` owns slots ``[r*k, (r+1)*k)``), every expert
            in ``[0, num_logical)`` at least once per layer
        num_logical: the number of logical experts E

    Returns:
        expertReplicaCount [L, E], expertReplicaStartOffset [L, E], globalSlotIds [L, P]:
        int64 numpy (the runtime's buffers are int32: ``.astype(np.int32)``)
    """
    num_logical = _count("num_logical", num_logical, 1)
    arr = _plan(phy2log, num_logical)
    count = np.stack([np.bincount(row, minlength=num_logical) for row in arr]).astype(np.int64)
    start = np.zeros_like(count)
    np.cumsum(count[:, :-1], axis=1, out=start[:, 1:])
    slots = np.argsort(arr, axis=1, kind="stable").astype(np.int64)  # by expert, then slot
    return count, start, slots


def initial_global_assignments(phy2log: Any, first_layer: int = 0) -> dict[int, list[int]]:
    """``{model layer index: [expert of every global slot]}``: plan layer ``l`` is model layer
    ``first_layer + l`` (e.g. ``first_k_dense_replace`` for DeepSeek models)."""
    first_layer = _count("first_layer", first_layer, 0)
    arr = _plan(phy2log)
    return {first_layer + layer: row.tolist() for layer, row in enumerate(arr)}


def load_balancer_config(
    phy2log: Any, *, first_layer: int = 0, layer_updates_per_iter: int = 0
) -> dict[str, Any]:
    """A dict for ``MoeLoadBalancerConfig(**config)`` (or ``moe_config.load_balancer``):
    ``num_slots`` (P), ``initial_global_assignments`` (:func:`initial_global_assignments`)
    and ``layer_updates_per_iter`` (0: the static placement; > 0 lets TensorRT-LLM's online
    balancer re-plan that many layers per iteration, starting from this one)."""
    assignments = initial_global_assignments(phy2log, first_layer)
    return {
        "num_slots": len(next(iter(assignments.values()))),
        "initial_global_assignments": assignments,
        "layer_updates_per_iter": _count("layer_updates_per_iter", layer_updates_per_iter, 0),
    }


def save_load_balancer_config(path: _PathLike, config: dict[str, Any]) -> None:
    """Write a :func:`load_balancer_config` dict as the YAML file ``moe_config.load_balancer``
    names (the layout of TensorRT-LLM's ``generate_eplb_config.py``: integer layer keys, one
    flow-style list per layer). Needs no YAML library.

    Raises:
        ValueError: ``config`` lacks a field or has a malformed one
    """
    expected = {"num_slots", "initial_global_assignments", "layer_updates_per_iter"}
    if not isinstance(config, dict) or set(config) != expected:
        got = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"config must have exactly the fields {sorted(expected)}, got {got}")
    num_slots = _count("num_slots", config["num_slots"], 1)
    updates = _count("layer_updates_per_iter", config["layer_updates_per_iter"], 0)
    assignments = config["initial_global_assignments"]
    if not isinstance(assignments, dict) or not assignments:
        raise ValueError("initial_global_assignments must be a non-empty {layer: [expert]} dict")
    lines = ["initial_global_assignments:"]
    for layer in sorted(assignments):
        row = [_count("expert id", e, 0) for e in assignments[layer]]
        if len(row) != num_slots:
            raise ValueError(
                f"initial_global_assignments[{layer}] has {len(row)} entries, num_slots is "
                f"{num_slots}"
            )
        lines.append(f"  {_count('layer index', layer, 0)}: [{', '.join(map(str, row))}]")
    lines += [f"layer_updates_per_iter: {updates}", f"num_slots: {num_slots}", ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
