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

    __slots__ = ("_array", "_source", "_cpu", "device", "shape")

    def __init__(self, weight: Any) -> None:
        self._array: Optional[np.ndarray] = None
        torch = _torch()
        if torch is not None and isinstance(weight, torch.Tensor):
            dtype = weight.dtype
            if dtype.is_complex or dtype == torch.bool:
                raise TypeError(f"weight must have a real or integer dtype, got {dtype}")
            self._source = weight.detach()
            self.device = weight.device
            self._cpu = self.device.type == "cpu"
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
        self._cpu = True
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
        if self._cpu:
            # A host tensor is viewed as numpy (no copy) and converted there in one pass;
            # dtypes numpy lacks (bfloat16) and tensors numpy cannot view (a pending conj or
            # neg bit) take torch's copy below.
            try:
                view = source.numpy()
            except (TypeError, RuntimeError):
                pass
            else:
                return np.ascontiguousarray(view, dtype=np.float64)
        torch = _torch()
        # A single copy does the device transfer, the dtype change and the re-layout.
        host = torch.empty(self.shape, dtype=torch.float64)
        host.copy_(source)
        return host.numpy()

    def wrap(self, *outputs: np.ndarray) -> tuple[Any, ...]:
        """int64 numpy outputs -> numpy, or torch tensors on the input's device."""
        if self.device is None:
            return outputs
        torch = _torch()
        tensors = tuple(torch.from_numpy(o) for o in outputs)
        if self._cpu:
            return tensors
        # One host-to-device transfer for all outputs, then views into it.
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(self.device)
        views, start = [], 0
        for t in tensors:
            views.append(flat[start : start + t.numel()].view(t.shape))
            start += t.numel()
        return tuple(views)
