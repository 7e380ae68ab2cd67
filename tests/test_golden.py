"""Plans must not change by accident: hashes of phy2log / log2phy / logcnt for 8 model shapes x
3 load seeds x every refine mode, fresh and re-planned from an old placement (max_moves None, 0
and 4), against those recorded from fasteplb 0.1.0 (tests/golden_plans_0_1.json).

A deliberate change of the plans updates the file (run this module as a script to print the new
hashes) and says why in the CHANGELOG.
"""

import hashlib
import json
import os
import sys

import fasteplb
import numpy as np
import pytest

SHAPES = {
    # name: (layers, experts, num_replicas, num_groups, num_nodes, num_gpus)
    "deepseek-v3-ep32-hier": (4, 256, 288, 8, 4, 32),
    "deepseek-v3-ep32-global": (4, 256, 288, 1, 4, 32),
    "deepseek-v3-ep144-k2": (3, 256, 288, 8, 4, 144),
    "qwen3-ep64-k3": (4, 128, 192, 1, 1, 64),
    "qwen3-ep32-k5": (4, 128, 160, 4, 2, 32),
    "kimi-k2-ep64": (3, 384, 448, 1, 1, 64),
    "mixtral-ep4": (6, 8, 8, 1, 1, 4),
    "small-hier-k4": (5, 32, 48, 4, 2, 12),
}


def loads(shape, seed):
    layers, experts = shape[0], shape[1]
    rng = np.random.default_rng(seed)
    w = rng.lognormal(0, 1.2, (layers, experts)) * 1000
    if seed == 1:
        w = np.round(w)  # integer counts: many exact ties
    if seed == 2:
        w[:, : experts // 4] = w[:, :1]  # equal loads in a block
    return w


def digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a, dtype=np.int64)
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def plans():
    for name, shape in SHAPES.items():
        sizes = shape[2:]
        for seed in range(3):
            w = loads(shape, seed)
            for refine in ("local", "swap", "none"):
                yield (
                    f"{name}/{seed}/{refine}/fresh",
                    lambda w=w, s=sizes, r=refine: fasteplb.rebalance_experts(w, *s, refine=r),
                )
            drift = w * np.random.default_rng(seed + 10).lognormal(0, 0.2, w.shape)
            old = fasteplb.rebalance_experts(w, *sizes)[0]
            for refine in ("local", "none"):
                for budget in (None, 0, 4):
                    yield (
                        f"{name}/{seed}/{refine}/migrate-{budget}",
                        (
                            lambda d=drift, s=sizes, r=refine, o=old, b=budget: (
                                fasteplb.rebalance_experts(
                                    d, *s, refine=r, old_phy2log=o, max_moves=b
                                )
                            )
                        ),
                    )


GOLDEN = os.path.join(os.path.dirname(__file__), "golden_plans_0_1.json")


def test_plans_equal_those_of_0_1():
    with open(GOLDEN) as f:
        golden = json.load(f)
    got = {key: digest(plan()) for key, plan in plans()}
    assert sorted(got) == sorted(golden)
    changed = sorted(k for k in golden if got[k] != golden[k])
    assert not changed, f"{len(changed)} of {len(golden)} plans changed, e.g. {changed[:5]}"


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_give_the_recorded_plans(threads):
    with open(GOLDEN) as f:
        golden = json.load(f)
    name = "deepseek-v3-ep32-hier"
    shape = SHAPES[name]
    w = np.concatenate([loads(shape, seed) for seed in range(3)])
    got = fasteplb.rebalance_experts(w, *shape[2:], num_threads=threads)
    layers = shape[0]
    for seed in range(3):
        rows = slice(seed * layers, (seed + 1) * layers)
        phy2log, log2phy, logcnt = (a[rows] for a in got)
        # log2phy's last dimension is the largest count over all layers of the call: trim it.
        log2phy = log2phy[:, :, : logcnt.max()]
        assert digest((phy2log, log2phy, logcnt)) == golden[f"{name}/{seed}/local/fresh"]


if __name__ == "__main__":
    json.dump({key: digest(plan()) for key, plan in plans()}, sys.stdout, indent=0, sort_keys=True)
