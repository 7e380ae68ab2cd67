"""The synthetic generator: expert popularity per layer, domain and archetype; traffic
regimes and request batches; :func:`generate` and :func:`domain_popularity`."""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Any, Optional

import numpy as np

from ._profiles import (
    TRAFFIC,
    ModelShape,
    Profile,
    Traffic,
    _check_profile,
    _int,
    _model,
    _profile,
    _seed,
)
from ._sampler import _counts

# ----------------------------------------------------------------------------------------
# Popularity: layer shapes, domains, archetypes.
# ----------------------------------------------------------------------------------------


def _layer_shapes(p: Profile, layers: int, rng: np.random.Generator) -> np.ndarray:
    """alpha_l: [layers] Gamma shapes."""
    depth = np.linspace(-0.5, 0.5, layers) if layers > 1 else np.zeros(1)
    log_alpha = math.log(p.alpha0) + p.alpha_trend * depth
    log_alpha = log_alpha + p.alpha_sigma * rng.standard_normal(layers)
    # An exact count (not a coin per layer) so that small models still get their share.
    n_skewed = round(p.skewed_layers * layers)
    if n_skewed:
        skewed = rng.permutation(layers)[:n_skewed]
        log_alpha[skewed] = math.log(p.alpha_skewed) + p.alpha_sigma * rng.standard_normal(n_skewed)
    return np.exp(log_alpha)


def _ranks_of(z: np.ndarray) -> np.ndarray:
    """Rank (0-based, no ties for continuous z) along the last axis."""
    return np.argsort(np.argsort(z, axis=-1), axis=-1)


def _popularity(p: Profile, shape: ModelShape, seed_seq: np.random.SeedSequence) -> dict:
    """Archetype popularity [D, A, L, E] (rows sum to 1) and what went into it."""
    rng = np.random.Generator(np.random.PCG64(seed_seq))
    layers, experts = shape.layers, shape.experts
    d, a = p.domains, p.archetypes
    alpha = _layer_shapes(p, layers, rng)
    g = rng.standard_normal((layers, experts))
    h = rng.standard_normal((d, layers, experts))
    k = rng.standard_normal((d, a, layers, experts))
    z_dom = math.sqrt(p.rho_dom) * g + math.sqrt(1 - p.rho_dom) * h
    z_arch = math.sqrt(p.rho_req) * z_dom[:, None] + math.sqrt(1 - p.rho_req) * k
    # Empirical Gaussian copula: a sorted Gamma(alpha_l) sample placed by the latent's ranks
    # keeps the Gamma marginal exactly and the latent's rank correlation.
    gam = rng.standard_gamma(np.broadcast_to(alpha[:, None], (d, a, layers, experts)))
    gam.sort(axis=-1)
    pop = np.take_along_axis(gam, _ranks_of(z_arch), axis=-1)
    pop += 1e-300  # a layer whose Gamma draws all underflow still gets a distribution
    pop /= pop.sum(axis=-1, keepdims=True)

    n_hot = round(p.p_hot * layers)
    hot_expert = np.full(layers, -1, dtype=np.int64)
    m_hot = np.ones(layers)
    if n_hot and experts > 1:
        hot_layers = np.sort(rng.permutation(layers)[:n_hot])
        # The shared latent's top expert: hot in every domain, as a structural hot expert.
        hot_expert[hot_layers] = np.argmax(g[hot_layers], axis=1)
        m_hot[hot_layers] = rng.uniform(p.m_hot[0], p.m_hot[1], n_hot)
        sub = pop[:, :, hot_layers]  # [D, A, H, E]
        idx = np.broadcast_to(hot_expert[hot_layers][:, None], (*sub.shape[:-1], 1))
        np.put_along_axis(sub, idx, 0.0, axis=-1)
        peak = sub.max(axis=-1, keepdims=True)
        np.put_along_axis(sub, idx, m_hot[hot_layers][:, None] * peak, axis=-1)
        sub /= sub.sum(axis=-1, keepdims=True)
        pop[:, :, hot_layers] = sub
    return {"archetype": pop, "alpha": alpha, "hot_expert": hot_expert, "m_hot": m_hot}


# ----------------------------------------------------------------------------------------
# Traffic: regimes of domain mixtures, requests arriving and leaving.
# ----------------------------------------------------------------------------------------


def _mixture(p: Profile, steps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Domain mixture per step [steps, D] and regime id per step [steps]."""
    d = p.domains
    w = np.empty((steps, d))
    regime = np.empty(steps, dtype=np.int64)
    start, r = 0, 0
    prev = prev_primary = None
    while start < steps:
        length = max(1, round(rng.exponential(p.dwell)))
        stop = min(steps, start + length)
        target = np.ones(1)
        if d > 1:
            # A new primary domain (never the current one) with weight `focus`; the rest
            # spread over the other domains by a flat Dirichlet.
            if prev_primary is None:
                primary = int(rng.integers(0, d))
            else:
                primary = int(rng.integers(0, d - 1))
                primary += primary >= prev_primary
            target = np.empty(d)
            target[np.arange(d) != primary] = (1 - p.focus) * rng.dirichlet(np.ones(d - 1))
            target[primary] = p.focus
            prev_primary = primary
        w[start:stop] = target
        if prev is not None and rng.random() < p.blend:
            ramp = min(stop - start, max(1, round(p.blend_steps)))
            t = (np.arange(1, ramp + 1) / ramp)[:, None]
            w[start : start + ramp] = (1 - t) * prev + t * target
        regime[start:stop] = r
        prev, start, r = target, stop, r + 1
    return w, regime


def _batch(
    p: Profile, traffic: Traffic, w: np.ndarray, tokens: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Requests of each archetype in every step's batch: [steps, D*A] int64, and the batch size.

    Departures are drawn for all steps at once; a stable sort of the events by slot then
    step gives each event the archetype it replaces, so the per-step histogram is a cumsum.
    """
    steps, d = w.shape
    a = p.archetypes
    comps = d * a
    slots = max(1, tokens // traffic.request_tokens)
    leave = min(1.0, 1.0 / max(traffic.request_steps, 1.0))
    cdf = np.cumsum(w, axis=1)

    def draw(step: np.ndarray) -> np.ndarray:
        u = rng.random(step.size)
        dom = np.minimum((u[:, None] > cdf[step]).sum(axis=1), d - 1)
        return dom * a + rng.integers(0, a, step.size)

    init = draw(np.zeros(slots, dtype=np.int64))
    per_step = rng.binomial(slots, leave, size=steps)
    per_step[0] = 0
    ev_step = np.repeat(np.arange(steps), per_step)
    ev_slot = rng.integers(0, slots, ev_step.size)
    ev_comp = draw(ev_step)
    order = np.lexsort((np.arange(ev_step.size), ev_step, ev_slot))
    s_slot, s_step, s_comp = ev_slot[order], ev_step[order], ev_comp[order]
    prev = np.empty_like(s_comp)
    if s_comp.size:
        prev[1:] = s_comp[:-1]
        first = np.ones(s_slot.size, dtype=bool)
        first[1:] = s_slot[1:] != s_slot[:-1]
        prev[first] = init[s_slot[first]]
    delta = np.bincount(s_step * comps + s_comp, minlength=steps * comps)
    delta -= np.bincount(s_step * comps + prev, minlength=steps * comps)
    hist = np.cumsum(delta.reshape(steps, comps), axis=0)
    hist += np.bincount(init, minlength=comps)
    return hist, slots


# ----------------------------------------------------------------------------------------
# Public generator.
# ----------------------------------------------------------------------------------------


def _streams(seed: int) -> list:
    # Independent streams: popularity does not depend on the number of steps or the batch.
    return np.random.SeedSequence(seed).spawn(3)


def domain_popularity(profile: Any, model: Any, *, seed: int = 0) -> np.ndarray:
    """The expected popularity of each traffic domain, as generate(..., seed) uses it.

    A domain's popularity is the mean of its archetypes' (its traffic, averaged over
    requests). Returns domain_popularity: [domains, layers, experts] float64, rows sum to 1.
    """
    _, prof = _profile(profile)
    _check_profile(prof)
    _, shape = _model(model)
    pop = _popularity(prof, shape, _streams(_seed(seed))[0])
    return pop["archetype"].mean(axis=1)


def generate(
    profile: Any,
    model: Any,
    steps: int,
    *,
    seed: int = 0,
    tokens_per_step: Optional[int] = None,
    top_k: Optional[int] = None,
    traffic: Optional[str] = None,
    return_meta: bool = False,
) -> Any:
    """A synthetic per-step expert-load trace.

    Parameters:
        profile: a name of PROFILES or a Profile
        model: a name of MODELS, a ModelShape, or (layers, experts[, top_k]) (top_k
            defaults to min(8, experts) there)
        steps: number of steps T (>= 1)
        seed: non-negative int; the same arguments and seed give the same trace
        tokens_per_step: tokens routed per step (default: the profile's)
        top_k: experts per token, 1..experts (default: the model's)
        traffic: a key of TRAFFIC overriding the profile's request preset
        return_meta: also return a dict describing the draw

    Returns:
        trace: [steps, layers, experts] int64; every [step, layer] row sums to
        top_k * tokens_per_step. With ``return_meta=True``, ``(trace, meta)``: meta holds
        the arguments and profile parameters (JSON-able) and numpy arrays
        "domain_popularity" [D, L, E], "alpha" [L], "hot_expert" [L] (-1: none),
        "m_hot" [L], "mixture" [T, D], "regime" [T], "batch" [T, C] (requests of each of
        the C = D * archetypes per step) and "archetype_popularity" [C, L, E]; see
        :func:`expected_windows` for the noise-free load they imply.
    """
    profile_name, prof = _profile(profile)
    _check_profile(prof)
    model_name, shape = _model(model)
    steps = _int("steps", steps)
    seed = _seed(seed)
    tokens = (
        prof.tokens_per_step
        if tokens_per_step is None
        else _int("tokens_per_step", tokens_per_step)
    )
    k = shape.top_k if top_k is None else _int("top_k", top_k)
    if k > shape.experts:
        raise ValueError(f"top_k must lie in 1..{shape.experts} (the experts), got {k}")
    traffic_name = prof.traffic if traffic is None else traffic
    if not isinstance(traffic_name, str):
        raise TypeError(f"traffic must be a preset name, got {type(traffic_name).__name__}")
    if traffic_name not in TRAFFIC:
        raise ValueError(f"traffic must be one of {sorted(TRAFFIC)}, got {traffic_name!r}")

    pop_ss, traffic_ss, counts_ss = _streams(seed)
    pop = _popularity(prof, shape, pop_ss)
    rng = np.random.Generator(np.random.PCG64(traffic_ss))
    mixture, regime = _mixture(prof, steps, rng)
    hist, slots = _batch(prof, TRAFFIC[traffic_name], mixture, tokens, rng)
    arch = pop["archetype"].reshape(-1, shape.layers, shape.experts)
    trace = _counts(hist, slots, arch, k * tokens, counts_ss)
    if not return_meta:
        return trace
    meta = {
        "generator": "fasteplb.workloads",
        "profile": profile_name,
        "params": {f.name: getattr(prof, f.name) for f in fields(prof)},
        "model": model_name,
        "shape": asdict(shape),
        "steps": steps,
        "seed": seed,
        "tokens_per_step": tokens,
        "top_k": k,
        "traffic": traffic_name,
        "domain_popularity": pop["archetype"].mean(axis=1),
        "alpha": pop["alpha"],
        "hot_expert": pop["hot_expert"],
        "m_hot": pop["m_hot"],
        "mixture": mixture,
        "regime": regime,
        "batch": hist,
        "archetype_popularity": arch,
    }
    return trace, meta


def expected_windows(meta: dict, size: int) -> np.ndarray:
    """The noise-free load of each window of ``size`` steps: [T // size, L, E] float64.

    What a trace from ``generate(..., return_meta=True)`` would sum to per window without the
    per-step multinomial sampling: each step's batch of requests, through its archetypes'
    popularity, scaled to ``top_k * tokens_per_step`` routed tokens (the sampler's expected
    counts). Planning on it is a ceiling for any forecast of the next window from the past.
    """
    size = _int("size", size)
    hist = np.asarray(meta["batch"], dtype=np.float64)
    arch = np.asarray(meta["archetype_popularity"], dtype=np.float64)
    n = meta["top_k"] * meta["tokens_per_step"]
    usable = hist.shape[0] // size * size
    per_window = hist[:usable].reshape(-1, size, hist.shape[1]).sum(axis=1)
    per_window *= n / hist[0].sum()  # every step's batch holds the same number of requests
    return np.einsum("wc,cle->wle", per_window, arch)
