"""Model shapes, traffic presets and the generator's profiles, and the checks of the
arguments that name them (see the package docstring for the model)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------------
# Model shapes, traffic presets, profiles.
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """The MoE shape of a model: ``layers`` MoE layers of ``experts`` routed experts each,
    ``top_k`` experts per token, ``groups`` expert groups (DeepSeek's group-limited routing)."""

    layers: int
    experts: int
    top_k: int
    groups: int = 1


#: Model shapes of WORKLOADS.md (MoE layers only).
MODELS: dict[str, ModelShape] = {
    "deepseek-v3": ModelShape(58, 256, 8, 8),
    "kimi-k2": ModelShape(60, 384, 8, 1),
    "qwen3-235b": ModelShape(94, 128, 8, 1),
    "qwen3-30b": ModelShape(48, 128, 8, 1),
    "qwen2-57b": ModelShape(28, 64, 8, 1),
    "deepseek-v2-lite": ModelShape(26, 64, 6, 1),
    "gpt-oss-120b": ModelShape(36, 128, 4, 1),
    "mixtral-8x7b": ModelShape(32, 8, 2, 1),
}


@dataclass(frozen=True)
class Traffic:
    """How requests fill a step's token budget.

    A step holds ``max(1, tokens_per_step // request_tokens)`` requests of equal weight; each
    leaves after a geometric number of steps with mean ``request_steps`` (>= 1) and is
    replaced by a request drawn from the current domain mixture.
    """

    request_tokens: int  # tokens one request adds to a step (1: decode)
    request_steps: float  # mean steps a request stays in the batch


#: Request presets: decode (many long-lived one-token requests: a smooth, slowly drifting
#: mixture), prefill (a few prompt chunks per step, replaced almost every step: the step's
#: popularity jumps with the few requests in it), small batch (few decode requests).
TRAFFIC: dict[str, Traffic] = {
    "decode-heavy": Traffic(request_tokens=1, request_steps=500.0),
    "prefill-heavy": Traffic(request_tokens=2048, request_steps=1.5),
    "small-batch": Traffic(request_tokens=1, request_steps=200.0),
}


@dataclass(frozen=True)
class Profile:
    """Parameters of the synthetic generator (see the module docstring for the model).

    Layer skew:
        alpha0: median Gamma shape of the expert popularity (small: skewed; 1/alpha is the
            squared coefficient of variation of an expert's share).
        alpha_sigma: standard deviation of log(alpha_l) across layers.
        alpha_trend: change of log(alpha_l) from the first to the last layer (> 0: deeper
            layers more balanced).
        skewed_layers: fraction of layers whose shape is drawn around ``alpha_skewed``
            instead (aux-loss models keep most layers balanced, a few are not).
        alpha_skewed: median shape of those layers.
        p_hot: fraction of layers with a super-hot expert.
        m_hot: (low, high): that expert's share is uniform(low, high) times the largest share
            of the other experts (in every domain and archetype).
    Domains:
        domains: traffic domains D.
        rho_dom: latent correlation of the domains' popularity (0: unrelated hot experts).
        archetypes: request archetypes per domain.
        rho_req: latent correlation of an archetype with its domain.
    Traffic:
        dwell: mean steps of a regime (exponential, at least 1).
        blend: probability that a switch blends linearly into the new mixture (else jumps).
        blend_steps: length of a blend in steps.
        focus: weight of a regime's primary domain (a different one at each switch); the
            rest is spread over the other domains by a flat Dirichlet.
        traffic: request preset, a key of TRAFFIC.
        tokens_per_step: default tokens per step.
    """

    alpha0: float
    alpha_sigma: float = 0.3
    alpha_trend: float = 0.0
    skewed_layers: float = 0.0
    alpha_skewed: float = 3.0
    p_hot: float = 0.0
    m_hot: tuple[float, float] = (1.0, 1.0)
    domains: int = 4
    rho_dom: float = 0.3
    archetypes: int = 4
    rho_req: float = 0.8
    dwell: float = 1000.0
    blend: float = 0.5
    blend_steps: float = 100.0
    focus: float = 0.8
    traffic: str = "decode-heavy"
    tokens_per_step: int = 4096


#: The five profiles, calibrated against WORKLOADS.md's targets (module docstring).
PROFILES: dict[str, Profile] = {
    # Qwen3 (no aux loss at inference scale): heavy, domain-specific skew; alpha rises with
    # depth as in the real 235B / 30B matrices (moment estimate 0.28 -> 0.44 over depth).
    # alpha0 sits a little under the real 0.33 because the batch mixes archetypes and a 5%
    # background of other domains, which evens the load out. Long regimes of one domain.
    "qwen3-like": Profile(
        alpha0=0.28,
        alpha_sigma=0.3,
        alpha_trend=0.45,
        domains=4,
        rho_dom=0.1,
        archetypes=4,
        rho_req=0.95,
        dwell=2000.0,
        blend=0.5,
        blend_steps=200.0,
        focus=0.95,
        traffic="decode-heavy",
        tokens_per_step=4096,
    ),
    # DeepSeek-V3/R1: moderate skew plus a super-hot expert in most layers; per-step
    # statistics of a decode batch of 1024 tokens (32 per GPU at EP32), at which a plan from
    # the previous 100 steps leaves the busiest GPU ~1.11x the mean, as TensorRT-LLM reports.
    "deepseek-v3-like": Profile(
        alpha0=0.7,
        alpha_sigma=0.3,
        p_hot=0.6,
        m_hot=(1.5, 3.0),
        domains=4,
        rho_dom=0.3,
        archetypes=4,
        rho_req=0.95,
        dwell=300.0,
        blend=0.5,
        blend_steps=50.0,
        focus=0.9,
        traffic="decode-heavy",
        tokens_per_step=1024,
    ),
    # Aux-loss balanced (Qwen2-57B): most layers near uniform, a third skewed, a hot expert
    # in a few layers (the real matrices' worst layers are one expert at 2.5-4x the mean).
    "aux-loss-balanced": Profile(
        alpha0=25.0,
        alpha_sigma=0.3,
        skewed_layers=1 / 3,
        alpha_skewed=3.0,
        p_hot=0.15,
        m_hot=(1.5, 2.5),
        domains=4,
        rho_dom=0.5,
        archetypes=4,
        rho_req=0.95,
        dwell=1000.0,
        blend=0.5,
        blend_steps=100.0,
        focus=0.9,
        traffic="decode-heavy",
        tokens_per_step=4096,
    ),
    "near-uniform": Profile(
        alpha0=32.0,
        alpha_sigma=0.25,
        domains=4,
        rho_dom=0.5,
        archetypes=4,
        rho_req=0.95,
        dwell=1000.0,
        focus=0.9,
        traffic="decode-heavy",
        tokens_per_step=4096,
    ),
    # Worst case for a balancer: very skewed, a very hot expert everywhere, unrelated
    # domains, regimes of ~20 steps entered by jumps, prefill batches of a few requests.
    "stress": Profile(
        alpha0=0.2,
        alpha_sigma=0.3,
        p_hot=1.0,
        m_hot=(2.0, 4.0),
        domains=8,
        rho_dom=0.0,
        archetypes=4,
        rho_req=0.6,
        dwell=20.0,
        blend=0.0,
        blend_steps=1.0,
        focus=0.9,
        traffic="prefill-heavy",
        tokens_per_step=16384,
    ),
}


# ----------------------------------------------------------------------------------------
# Argument checks.
# ----------------------------------------------------------------------------------------


def _int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _profile(profile: Any) -> tuple[str, Profile]:
    if isinstance(profile, Profile):
        return "custom", profile
    if not isinstance(profile, str):
        raise TypeError(f"profile must be a name or a Profile, got {type(profile).__name__}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {sorted(PROFILES)}")
    return profile, PROFILES[profile]


def _model(model: Any) -> tuple[str, ModelShape]:
    if isinstance(model, ModelShape):
        return "custom", model
    if isinstance(model, str):
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; valid models: {sorted(MODELS)}")
        return model, MODELS[model]
    if isinstance(model, (tuple, list)) and len(model) in (2, 3):
        layers = _int("model layers", model[0])
        experts = _int("model experts", model[1])
        top_k = _int("model top_k", model[2]) if len(model) == 3 else min(8, experts)
        return "custom", ModelShape(layers, experts, top_k)
    raise TypeError(
        "model must be a name, a ModelShape or (layers, experts[, top_k]), "
        f"got {type(model).__name__}"
    )


def _check_profile(p: Profile) -> None:
    positive = ("alpha0", "alpha_skewed", "dwell", "blend_steps")
    for name in positive:
        v = getattr(p, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"profile.{name} must be a finite number > 0, got {v!r}")
    for name in ("skewed_layers", "p_hot", "rho_dom", "rho_req", "blend", "focus"):
        v = getattr(p, name)
        if not (isinstance(v, (int, float)) and 0 <= v <= 1):
            raise ValueError(f"profile.{name} must lie in [0, 1], got {v!r}")
    if not (p.alpha_sigma >= 0 and math.isfinite(p.alpha_trend)):
        raise ValueError("profile.alpha_sigma must be >= 0 and alpha_trend finite")
    lo, hi = p.m_hot
    if not (1 <= lo <= hi):
        raise ValueError(f"profile.m_hot must be (low, high) with 1 <= low <= high, got {p.m_hot}")
    _int("profile.domains", p.domains)
    _int("profile.archetypes", p.archetypes)
    _int("profile.tokens_per_step", p.tokens_per_step)
    if p.traffic not in TRAFFIC:
        raise ValueError(f"profile.traffic must be one of {sorted(TRAFFIC)}, got {p.traffic!r}")


def _seed(seed: Any) -> int:
    return _int("seed", seed, minimum=0)
