"""fasteplb.integrations.trtllm: plans in TensorRT-LLM's layouts.

The layouts were read in NVIDIA/TensorRT-LLM (see the module docstring):
``cpp/tensorrt_llm/runtime/moeLoadBalancer/moeLoadBalancer.cpp`` builds the GPU placement
(``prepareGpuPlacementInfo``) and ``tensorrt_llm/llmapi/llm_args.py`` defines
``MoeLoadBalancerConfig``. TensorRT-LLM is not installable here, so the tests check a
hand-computed example and a line-by-line Python transliteration of ``prepareGpuPlacementInfo``.
"""

from __future__ import annotations

import fasteplb
import numpy as np
import pytest
from fasteplb.integrations import trtllm

# E = 3 experts, 2 ranks x 2 slots. Layer 0: rank 0 holds [0, 1], rank 1 [2, 0];
# layer 1: rank 0 holds [2, 1], rank 1 [0, 1].
PLAN = [[0, 1, 2, 0], [2, 1, 0, 1]]


def test_csr_of_a_hand_computed_example():
    count, start, slots = trtllm.to_csr(PLAN, 3)
    # Expert 0 of layer 0 sits in global slots 0 and 3, expert 1 in 1, expert 2 in 2.
    assert count.tolist() == [[2, 1, 1], [1, 2, 1]]
    assert start.tolist() == [[0, 2, 3], [0, 1, 3]]
    assert slots.tolist() == [[0, 3, 1, 2], [2, 1, 3, 0]]
    assert count.dtype == start.dtype == slots.dtype == np.int64


def prepare_gpu_placement_info(rank_expert_ids, expert_count):
    """moeLoadBalancer.cpp's prepareGpuPlacementInfo, transliterated (one layer)."""
    ep_size, slot_count_per_rank = len(rank_expert_ids), len(rank_expert_ids[0])
    replica_count = [0] * expert_count
    for rank in range(ep_size):  # setInitialWeightAssignments counts the replicas
        for local_slot in range(slot_count_per_rank):
            replica_count[rank_expert_ids[rank][local_slot]] += 1
    start_offset, offset = [0] * expert_count, 0
    for expert in range(expert_count):
        start_offset[expert] = offset
        offset += replica_count[expert]
    global_slot_ids = [0] * (ep_size * slot_count_per_rank)
    seen = [[] for _ in range(expert_count)]
    for rank in range(ep_size):
        for local_slot in range(slot_count_per_rank):
            expert = rank_expert_ids[rank][local_slot]
            replica = len(seen[expert])
            global_slot = rank * slot_count_per_rank + local_slot
            seen[expert].append(global_slot)
            global_slot_ids[start_offset[expert] + replica] = global_slot
    return replica_count, start_offset, global_slot_ids


@pytest.mark.parametrize("seed", range(3))
def test_csr_matches_the_runtimes_construction(seed):
    rng = np.random.default_rng(seed)
    weight = rng.lognormal(0.0, 1.5, (4, 32))
    phy2log, _, logcnt = fasteplb.rebalance_experts(weight, 48, 1, 1, 8)
    count, start, slots = trtllm.to_csr(phy2log, 32)
    assert np.array_equal(count, logcnt)
    for layer, row in enumerate(phy2log.tolist()):
        ranks = [row[r * 6 : (r + 1) * 6] for r in range(8)]
        want = prepare_gpu_placement_info(ranks, 32)
        assert (count[layer].tolist(), start[layer].tolist(), slots[layer].tolist()) == want


def test_initial_global_assignments_and_config(tmp_path):
    assert trtllm.initial_global_assignments(PLAN) == {0: [0, 1, 2, 0], 1: [2, 1, 0, 1]}
    got = trtllm.initial_global_assignments(np.array(PLAN, dtype=np.int32), first_layer=3)
    assert got == {3: [0, 1, 2, 0], 4: [2, 1, 0, 1]}
    assert all(type(e) is int for row in got.values() for e in row)
    config = trtllm.load_balancer_config(PLAN, first_layer=3)
    # Exactly MoeLoadBalancerConfig's fields (llm_args.py), so MoeLoadBalancerConfig(**config).
    assert config == {
        "num_slots": 4,
        "initial_global_assignments": {3: [0, 1, 2, 0], 4: [2, 1, 0, 1]},
        "layer_updates_per_iter": 0,
    }
    assert trtllm.load_balancer_config(PLAN, layer_updates_per_iter=2)["layer_updates_per_iter"]
    path = tmp_path / "eplb.yaml"
    trtllm.save_load_balancer_config(path, config)
    assert path.read_text() == (
        "initial_global_assignments:\n"
        "  3: [0, 1, 2, 0]\n"
        "  4: [2, 1, 0, 1]\n"
        "layer_updates_per_iter: 0\n"
        "num_slots: 4\n"
    )
    yaml = pytest.importorskip("yaml")  # TensorRT-LLM reads it with yaml.safe_load
    assert yaml.safe_load(path.read_text()) == config


def test_torch_plans_are_accepted():
    torch = pytest.importorskip("torch")
    count, _, _ = trtllm.to_csr(torch.tensor(PLAN), 3)
    assert count.tolist() == [[2, 1, 1], [1, 2, 1]]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: trtllm.to_csr([[0, 1, 1, 0]], 3), ValueError, "layer 0 lacks expert 2"),
        (lambda: trtllm.to_csr([[0, 1, 3, 2]], 3), ValueError, r"< num_logical \(3\)"),
        (lambda: trtllm.to_csr([[0, -1, 2, 1]], 3), ValueError, ">= 0"),
        (lambda: trtllm.to_csr([0, 1, 2], 3), ValueError, r"\[layers, slots\]"),
        (lambda: trtllm.to_csr([[0.5, 1, 2]], 3), TypeError, "integers"),
        (lambda: trtllm.to_csr(PLAN, 0), ValueError, "num_logical must be >= 1"),
        (lambda: trtllm.to_csr(PLAN, 3.0), TypeError, "num_logical must be an integer"),
        (
            lambda: trtllm.initial_global_assignments(PLAN, first_layer=-1),
            ValueError,
            "first_layer must be >= 0",
        ),
        (
            lambda: trtllm.load_balancer_config(PLAN, layer_updates_per_iter=True),
            TypeError,
            "layer_updates_per_iter",
        ),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_config_is_not_written(tmp_path):
    config = trtllm.load_balancer_config(PLAN)
    path = tmp_path / "c.yaml"
    with pytest.raises(ValueError, match="exactly the fields"):
        trtllm.save_load_balancer_config(path, {**config, "extra": 1})
    with pytest.raises(ValueError, match=r"has 3 entries, num_slots is 4"):
        trtllm.save_load_balancer_config(
            path, {**config, "initial_global_assignments": {0: [0, 1, 2]}}
        )
    assert not path.exists()
