"""torch / numpy in, the same kind out: one copy to host float64, one copy back."""

from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np


def _torch() -> Any:
    # torch is optional: only look at it when the caller already imported it.
    return sys.modules.get("torch")


class Weights:
    """The caller's load tensor, converted on first use of `array` to a C-contiguous float64
    numpy array; `shape` is known before, so sizes are checked before anything is copied.

    `array`: [rows, cols] float64; `device`: the torch device, or None for numpy input.
    """

    __slots__ = ("_array", "_source", "device", "shape")

    def __init__(self, weight: Any) -> None:
        self._array: Optional[np.ndarray] = None
        torch = _torch()
        if torch is not None and isinstance(weight, torch.Tensor):
            if weight.is_complex() or weight.dtype == torch.bool:
                raise TypeError(f"weight must have a real or integer dtype, got {weight.dtype}")
            self._source = weight.detach()
            self.device = weight.device
            self.shape = tuple(weight.shape)
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
        self._source = arr
        self.device = None
        self.shape = arr.shape

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self._convert()
        return self._array

    def _convert(self) -> np.ndarray:
        source = self._source
        if self.device is None:
            return np.ascontiguousarray(source, dtype=np.float64)
        torch = _torch()
        if source.device.type == "cpu" and source.dtype == torch.float64 and (
            source.is_contiguous()
        ):
            return source.numpy()
        # A single copy does the device transfer, the dtype change and the re-layout.
        host = torch.empty(tuple(source.shape), dtype=torch.float64)
        host.copy_(source)
        return host.numpy()

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
