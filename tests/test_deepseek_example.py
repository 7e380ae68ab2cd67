"""The worked example from DeepSeek's EPLB README, reproduced exactly."""

import fasteplb
import numpy as np
import pytest
from helpers import check_plan

torch = pytest.importorskip("torch")  # the wheels' test run has numpy only

WEIGHT = [
    [90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
    [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27],
]
SIZES = (16, 4, 2, 8)  # num_replicas, num_groups, num_nodes, num_gpus
DEEPSEEK_PHY2LOG = [
    [5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
    [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1],
]


@pytest.fixture
def weight():
    return torch.tensor(WEIGHT)


@pytest.fixture(params=["none", "swap"])
def plan(request, weight):
    return request.param, fasteplb.rebalance_experts(weight, *SIZES, refine=request.param)


def test_greedy_reproduces_deepseek_output(weight):
    phy2log, _, _ = fasteplb.rebalance_experts(weight, *SIZES, refine="none")
    assert phy2log.tolist() == DEEPSEEK_PHY2LOG


def test_outputs_are_torch_int64_on_input_device(plan, weight):
    _, outputs = plan
    for out in outputs:
        assert isinstance(out, torch.Tensor)
        assert out.dtype == torch.int64
        assert out.device == weight.device


def test_plan_is_valid(plan, weight):
    _, outputs = plan
    check_plan(weight, *outputs, *SIZES)


def test_log2phy_and_logcnt_consistent(plan):
    _, (phy2log, log2phy, logcnt) = plan
    assert log2phy.shape == (2, 12, int(logcnt.max()))
    for layer in range(2):
        assert torch.equal(torch.bincount(phy2log[layer], minlength=12), logcnt[layer])
        for e in range(12):
            slots = log2phy[layer, e]
            n = int(logcnt[layer, e])
            assert (slots[n:] == -1).all()
            assert (phy2log[layer, slots[:n]] == e).all()
    # With 16 slots for 12 experts, 4 experts per layer get a second replica.
    assert (logcnt.sum(dim=1) == 16).all()
    assert ((logcnt == 2).sum(dim=1) == 4).all()


def test_greedy_gpu_loads_equal_deepseek_plan(weight):
    phy2log, _, _ = fasteplb.rebalance_experts(weight, *SIZES, refine="none")
    ours = fasteplb.gpu_loads(phy2log, weight, 8)
    theirs = fasteplb.gpu_loads(np.array(DEEPSEEK_PHY2LOG), np.array(WEIGHT), 8)
    assert isinstance(ours, torch.Tensor) and ours.shape == (2, 8)
    np.testing.assert_array_equal(ours.numpy(), theirs)
    # Hand check of GPU 0 in layer 0: slots 0, 1 hold experts 5 (165 / 2) and 6 (39).
    assert theirs[0, 0] == 165 / 2 + 39


def test_swap_is_no_worse_than_greedy(weight):
    greedy = fasteplb.rebalance_experts(weight, *SIZES, refine="none")[0]
    swapped = fasteplb.rebalance_experts(weight, *SIZES, refine="swap")[0]
    greedy_max = fasteplb.gpu_loads(greedy, weight, 8).max(dim=1).values
    swapped_max = fasteplb.gpu_loads(swapped, weight, 8).max(dim=1).values
    assert (swapped_max <= greedy_max).all()
