"""torch / numpy in, the same kind out: one copy to host float64, one copy back."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def _torch() -> Any:
    # torch is optional: only look at it when the caller already imported it.
    return sys.modules.get("torch")


class Weights:
    """The caller's load tensor as a C-contiguous float64 numpy array, plus where it came from.

    `array`: [rows, cols] float64; `device`: the torch device, or None for numpy input.
    """

    __slots__ = ("array", "device")

    def __init__(self, weight: Any) -> None:
        torch = _torch()
        if torch is not None and isinstance(weight, torch.Tensor):
            if weight.is_complex() or weight.dtype == torch.bool:
                raise TypeError(f"weight must have a real or integer dtype, got {weight.dtype}")
            weight = weight.detach()
            self.device = weight.device
            if weight.device.type == "cpu" and weight.dtype == torch.float64 and (
                weight.is_contiguous()
            ):
                self.array = weight.numpy()
            else:
                # A single copy does the device transfer, the dtype change and the re-layout.
                host = torch.empty(tuple(weight.shape), dtype=torch.float64)
                host.copy_(weight)
                self.array = host.numpy()
            return
        if isinstance(weight, np.ndarray) and weight.dtype.kind in "iuf":
            arr = weight
        else:
            try:
                arr = np.asarray(weight)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"weight must be a tensor or array of numbers: {exc}") from None
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"weight must have a real or integer dtype, got {arr.dtype}")
        self.device = None
        self.array = np.ascontiguousarray(arr, dtype=np.float64)

    def wrap(self, *outputs: np.ndarray) -> tuple[Any, ...]:
        """int64 numpy outputs -> numpy, or torch tensors on the input's device."""
        if self.device is None:
            return outputs
        torch = _torch()
        tensors = tuple(torch.from_numpy(o) for o in outputs)
        if self.device.type == "cpu":
            return tensors
        # One host-to-device transfer for all outputs, then views into it.
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(self.device)
        views, start = [], 0
        for t in tensors:
            views.append(flat[start : start + t.numel()].view(t.shape))
            start += t.numel()
        return tuple(views)
