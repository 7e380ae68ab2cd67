"""fasteplb as vLLM's EPLB policy.

Operators add two lines (see the README)::

    pip install fasteplb
    export FASTEPLB_VLLM=1        # in the environment of every vLLM process

fasteplb's ``vllm.general_plugins`` entry point ``fasteplb`` (:func:`plugin`) runs in every
vLLM process; with ``FASTEPLB_VLLM=1`` it replaces vLLM's ``EPLB_POLICIES["default"]`` by
:class:`FastEplbPolicy`. Replacing the ``"default"`` entry is the only way in: vLLM 0.33's
config type ``EPLBPolicyOption`` is ``Literal["default"]``, and async EPLB (on by default)
accepts no other policy. Where ``VLLM_PLUGINS`` restricts the plugins, add ``fasteplb`` to it.
Code that sets vLLM up itself calls :func:`register` instead (it also takes planner options).

The contract (vLLM 0.33, ``vllm/distributed/eplb/policy/abstract.py``; the callers are
``EplbState.rearrange`` in ``eplb_state.py`` and ``run_rebalance_experts`` in
``async_worker.py``)::

    FastEplbPolicy.rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks,
                                     old_global_expert_indices=None) -> phy2log [L, P]

``weight`` is the load window summed per logical expert, [L, E], int32 or int64 (any real
dtype works); the result is an int64 CPU tensor, GPU-major (rank ``r`` owns slots
``[r*k, (r+1)*k)``), from which vLLM derives ``logical_to_physical_map`` and
``logical_replica_count`` itself (``compute_logical_maps``). ``old_global_expert_indices`` is
vLLM's current ``physical_to_logical_map`` [L, P'] (vLLM's docstring says [L, E]; it is not):

- rows that are a complete placement are re-planned *from* it
  (``fasteplb.rebalance_experts(..., old_phy2log=...)``): experts stay on their GPUs unless
  moving them pays off, so a rebalance copies far fewer expert weights;
- rows padded with ``-1`` (slots an elastic scale-up added) or lacking an expert are planned
  fresh, keeping experts that stay on a GPU in their old slot, as vLLM's default policy does;
- a map of another width (after an elastic scale-up or scale-down ``num_replicas`` changed)
  is ignored: every layer is planned fresh.

``num_nodes`` may be any divisor of ``num_ranks`` (vLLM forces 1 when it is not one); the
hierarchical policy applies when ``num_groups % num_nodes == 0``, as in vLLM's default.
Plans are deterministic, so every rank computes the same one.

:class:`FastEplbPolicy` subclasses vLLM's ``AbstractEplbPolicy`` when vLLM is importable and
is a plain class otherwise (usable without vLLM). Its ``rebalance_experts`` is a classmethod,
so it serves both vLLM 0.33's class-based registry and an instance-based one (a policy object
created from the class, as newer vLLM pull requests do).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any, Optional

from . import _common

# FastEplbPolicy is built on first access (module __getattr__), on vLLM's base class if any.
__all__ = ["ENV", "FastEplbPolicy", "plugin", "register", "unregister"]  # noqa: F822

ENV = "FASTEPLB_VLLM"

# Where vLLM keeps its EPLB policies: 0.33, and the path newer vLLM moved them to.
_POLICY_MODULES = ("vllm.distributed.eplb.policy", "vllm.backends.distributed.eplb.policy")

_log = logging.getLogger("fasteplb")
_classes: dict[Optional[type], type] = {}
_replaced: list[tuple[dict[str, Any], Any]] = []  # (registry, the policy it held before)
# With the ``history`` option: the windows vLLM handed the policy, one per rebalance.
_history = _common.WindowHistory()


def _rebalance_experts(
    cls: type,
    weight: Any,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_ranks: int,
    old_global_expert_indices: Any = None,
) -> Any:
    """vLLM's EPLB policy entry point, planned by fasteplb (see the module docstring).

    Args:
        weight: [layers, num_logical_experts] load statistics (torch tensor or array-like)
        num_replicas: physical expert slots P, a multiple of ``num_ranks``
        num_groups: expert groups
        num_nodes: server nodes (1 when it does not divide ``num_ranks``)
        num_ranks: EP ranks (GPUs)
        old_global_expert_indices: vLLM's current physical_to_logical_map [layers, P'], or
            None

    Returns:
        phy2log: int64 CPU tensor [layers, num_replicas] (a numpy array when torch is not
        installed), the logical expert in each physical slot
    """
    if num_ranks > 0 and num_nodes > 0 and num_ranks % num_nodes:
        num_nodes = 1  # as vLLM's caller does before calling a policy
    options = cls.options
    if options.get("history") is not None:
        # vLLM hands over one window per rebalance: plan for the next from the kept ones.
        weight, options = _history.forecast(weight, options)
    phy2log, _, _ = _common.plan(
        weight, num_replicas, num_groups, num_nodes, num_ranks, old_global_expert_indices,
        **options,
    )  # fmt: skip
    try:
        import torch
    except ImportError:
        return phy2log
    return torch.from_numpy(phy2log)


def _policy_class(base: Optional[type]) -> type:
    """FastEplbPolicy on top of ``base`` (vLLM's AbstractEplbPolicy, or None for a plain
    class); one class per base."""
    if base not in _classes:
        namespace = {
            "__module__": __name__,
            "__qualname__": "FastEplbPolicy",
            "__doc__": (
                "vLLM EPLB policy planned by fasteplb: "
                "``rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks, "
                "old_global_expert_indices=None) -> phy2log [L, P]`` (int64, CPU). "
                "``options``: keyword arguments for fasteplb.rebalance_experts (set by "
                "``register(**options)``)."
            ),
            "options": {},
            "rebalance_experts": classmethod(_rebalance_experts),
        }
        _classes[base] = type("FastEplbPolicy", (base,) if base else (), namespace)
    return _classes[base]


def _policy_module() -> Any:
    """vLLM's module holding EPLB_POLICIES and AbstractEplbPolicy (ImportError if none)."""
    errors = []
    for name in _POLICY_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        if hasattr(module, "EPLB_POLICIES"):
            return module
        errors.append(f"{name} has no EPLB_POLICIES")
    raise ImportError("cannot find vLLM's EPLB policy registry (" + "; ".join(errors) + ")")


def _vllm_base() -> Optional[type]:
    """vLLM's AbstractEplbPolicy, or None where vLLM is not importable."""
    try:
        if importlib.util.find_spec("vllm") is None:
            return None
        return getattr(_policy_module(), "AbstractEplbPolicy", None)
    except (ImportError, ValueError):
        return None


def __getattr__(name: str) -> Any:
    if name == "FastEplbPolicy":  # built on first use: vLLM's base class if importable
        return _policy_class(_vllm_base())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(policies: Optional[dict[str, Any]] = None, **options: Any) -> type:
    """Install FastEplbPolicy as vLLM's ``"default"`` EPLB policy; returns the class.

    Args:
        policies: the registry to patch (default: vLLM's ``EPLB_POLICIES``, imported now);
            vLLM reads it when a model is added, so register before the engine starts
        **options: fasteplb.rebalance_experts options for every rebalance: ``refine``,
            ``swap_rounds``, ``num_threads``, ``max_moves``, ``max_moves_total``,
            ``min_gain`` (checked now);
            ``history`` (and ``alpha``, ``window``, ``z``, ``replays``): keep the load
            window of each rebalance (the last 40) and plan for the next window from them
            (fasteplb.forecast_load; e.g. ``history="auto"``)

    Idempotent; :func:`unregister` puts the previous policy back.

    Raises:
        ImportError: no ``policies`` given and vLLM's registry cannot be imported
        TypeError, ValueError: a bad option
    """
    options = _common.check_options(options, "fasteplb.integrations.vllm.register")
    if policies is None:
        module = _policy_module()
        policies = module.EPLB_POLICIES
        cls = _policy_class(getattr(module, "AbstractEplbPolicy", None))
    else:
        cls = __getattr__("FastEplbPolicy")
    previous = policies.get("default")
    if previous is not cls:
        _replaced.append((policies, previous))
        policies["default"] = cls
    cls.options = options
    _history.clear()
    _log.info("fasteplb: %s is vLLM's default EPLB policy", cls.__qualname__)
    return cls


def unregister() -> None:
    """Undo every :func:`register`: each registry gets its previous policy back."""
    while _replaced:
        policies, previous = _replaced.pop()
        if previous is None:
            policies.pop("default", None)
        else:
            policies["default"] = previous


def plugin() -> None:
    """The ``vllm.general_plugins`` entry point (``fasteplb.integrations.vllm:plugin``).

    With ``FASTEPLB_VLLM=1`` (or true/yes/on) installs FastEplbPolicy (:func:`register`);
    unset or 0 does nothing, so installing fasteplb alone never changes vLLM. vLLM runs it in
    every process, possibly more than once: it is idempotent.

    Raises:
        ValueError: FASTEPLB_VLLM has another value
        ImportError: FASTEPLB_VLLM=1 but vLLM's EPLB registry cannot be imported
    """
    if _common.env_flag(ENV):
        register()
