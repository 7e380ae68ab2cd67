"""fasteplb inside the serving engines: vLLM, SGLang and TensorRT-LLM.

- :mod:`fasteplb.integrations.vllm`: ``FastEplbPolicy`` (vLLM's EPLB policy contract),
  ``register()``, and the ``vllm.general_plugins`` entry point ``plugin`` that installs the
  policy in every vLLM process when ``FASTEPLB_VLLM=1``.
- :mod:`fasteplb.integrations.sglang`: ``rebalance_experts`` (SGLang's algorithm contract),
  ``load_recorder_dump`` (the expert-distribution recorder's files),
  ``save_init_expert_location`` (a ``--init-expert-location`` file), ``register()`` and the
  ``sglang.srt.plugins`` entry point ``plugin`` (``FASTEPLB_SGLANG=1``).
- :mod:`fasteplb.integrations.trtllm`: ``to_csr`` (the runtime's ``MoePlacementInfo``
  layout), ``initial_global_assignments`` and ``load_balancer_config`` /
  ``save_load_balancer_config`` (a ``MoeLoadBalancerConfig``).

Importing this package or any of its modules needs neither the engines nor torch: the engines
are imported only by ``register()`` / ``plugin()``, torch only where a tensor or a ``.pt``
file is read or written.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["sglang", "trtllm", "vllm"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
