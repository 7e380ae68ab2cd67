"""torch / numpy in, the same kind out: one copy to host float64, one copy back.

The native path hands the core a *view* of the caller's data (`Weights.native`); the core
copies and converts it once, with the GIL held, and plans on that private snapshot, so a
caller that keeps writing into its tensor from another thread cannot corrupt a call.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np

# Integers above 2**53 lose their last digits in a float64 load.
MAX_EXACT_INTEGER = 1 << 53


def _torch() -> Any:
    # torch is optional: only look at it when the caller already imported it.
    return sys.modules.get("torch")


def check_tensor(x: Any, name: str) -> None:
    """TypeError naming `name` for torch tensors that hold no plain dense values."""
    torch = _torch()
    if getattr(x, "is_nested", False):
        raise TypeError(f"{name} must be a dense tensor, got a nested tensor")
    if x.layout != torch.strided:
        raise TypeError(
            f"{name} must be a dense (strided) tensor, got layout {x.layout}; "
            "convert it with .to_dense()"
        )
    if x.is_quantized:
        raise TypeError(f"{name} must not be quantized ({x.dtype}); call .dequantize() first")
    if x.is_meta:
        raise TypeError(f"{name} is on the meta device, which holds no values")
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must have a real or integer dtype, got {x.dtype}")


def check_not_masked(x: Any, name: str) -> None:
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name} must not be a masked array (its mask would be ignored); "
            f"pass {name}.filled(value) with the value masked entries should have"
        )


def _first_bool(obj: np.ndarray) -> Optional[tuple[int, ...]]:
    is_bool = np.frompyfunc(lambda v: isinstance(v, (bool, np.bool_)), 1, 1)(obj)
    hits = np.argwhere(np.asarray(is_bool, dtype=bool))
    return tuple(int(i) for i in hits[0]) if len(hits) else None


def _from_sequence(weight: Any) -> np.ndarray:
    """A nested list (or other array-like) as a numpy array; bools are not loads."""
    try:
        arr = np.asarray(weight)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"weight must be a tensor or array of numbers: {exc}") from None
    if arr.dtype.kind in "iuf" and not isinstance(weight, np.generic):
        objects = np.asarray(weight, dtype=object)
        at = _first_bool(objects) if objects.dtype == object else None
        if at is not None:
            raise TypeError(f"weight must hold numbers, not bools; found a bool at {list(at)}")
    return arr


def check_exact_integers(arr: np.ndarray, name: str) -> None:
    """ValueError for 64-bit integer loads that a float64 would round (the core's rule)."""
    if arr.dtype.kind not in "iu" or arr.dtype.itemsize < 8 or arr.size == 0:
        return
    big = arr > MAX_EXACT_INTEGER
    if big.any():
        at = np.unravel_index(int(np.argmax(big)), arr.shape)
        raise ValueError(
            f"{name} holds an integer load above 2**53, which float64 cannot represent "
            f"exactly; found {arr[at]} at [{', '.join(str(int(i)) for i in at)}]"
        )


class Weights:
    """The caller's load tensor.

    `shape` is known at once, so sizes are checked before anything is copied. `native` is a
    numpy view for the core (any real or integer dtype, any strides; bfloat16 as its int16
    bits); `array` a C-contiguous float64 copy for pure-Python code (the reference, metrics).
    `device`: the torch device, or None for numpy input.
    """

    __slots__ = ("_array", "_cpu", "_source", "device", "shape")

    def __init__(self, weight: Any) -> None:
        self._array: Optional[np.ndarray] = None
        torch = _torch()
        if torch is not None and isinstance(weight, torch.Tensor):
            check_tensor(weight, "weight")
            # detach() only where autograd tracks the tensor: it costs more than the rest of
            # this constructor, and .numpy() reads an untracked tensor as it is.
            self._source = weight.detach() if weight.requires_grad else weight
            self.device = weight.device
            self._cpu = weight.is_cpu
            self.shape = tuple(weight.shape)
            return
        check_not_masked(weight, "weight")
        if isinstance(weight, np.ndarray) and weight.dtype.kind in "iuf":
            arr = weight
        else:
            arr = _from_sequence(weight)
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"weight must have a real or integer dtype, got {arr.dtype}")
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if arr.dtype.itemsize > 8:
            arr = arr.astype(np.float64)  # long double: rounded to the core's precision
        self._source = arr
        self.device = None
        self._cpu = True
        self.shape = arr.shape

    @property
    def native(self) -> tuple[np.ndarray, bool]:
        """(view, bfloat16): what the core snapshots; no copy for host data it can read."""
        source = self._source
        if self.device is None:
            return source, False
        torch = _torch()
        if not self._cpu:
            source = source.cpu()  # the device-to-host copy, in the tensor's own dtype
        # Views, not torch ops: a torch CPU op would wake torch's intra-op threads (see wrap).
        try:
            if source.dtype == torch.bfloat16:
                return source.view(torch.int16).numpy(), True
            return source.numpy(), False
        except (TypeError, RuntimeError):
            # A pending neg bit, or a dtype numpy lacks: one torch copy to float64.
            host = torch.empty(self.shape, dtype=torch.float64)
            host.copy_(source)
            return host.numpy(), False

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            view, bfloat16 = self.native
            if bfloat16:
                view = (view.astype(np.uint16).astype(np.uint32) << 16).view(np.float32)
            check_exact_integers(view, "weight")
            self._array = np.ascontiguousarray(view, dtype=np.float64)
        return self._array

    def wrap_float(self, out: np.ndarray) -> Any:
        """One float64 numpy output -> numpy, or a torch tensor on the input's device."""
        if self.device is None:
            return out
        tensor = _torch().from_numpy(out)
        return tensor if self._cpu else tensor.to(self.device)

    def wrap(self, *outputs: np.ndarray) -> tuple[Any, ...]:
        """int64 numpy outputs -> numpy, or torch tensors on the input's device."""
        if self.device is None:
            return outputs
        torch = _torch()
        if self._cpu:
            return tuple([torch.from_numpy(o) for o in outputs])
        # One host-to-device transfer for all outputs, then views into it. The outputs are
        # joined in numpy: a torch CPU op here would wake torch's intra-op thread pool, whose
        # spinning threads then compete with the planner's own threads on the next call
        # (measured on a 16-core H200 host: 4.0 ms per call instead of 1.0 ms).
        flat = torch.from_numpy(np.concatenate([o.reshape(-1) for o in outputs]))
        flat = flat.to(self.device)
        views, start = [], 0
        for o in outputs:
            views.append(flat[start : start + o.size].view(o.shape))
            start += o.size
        return tuple(views)
