"""gpu_loads and balancedness on hand-computed plans."""

import fasteplb
import numpy as np
import pytest
from helpers import make_load

try:
    import torch
except ImportError:  # the wheels' test run has numpy only: the torch cases skip
    torch = None

# Layer 0: experts 0 and 2 have two replicas. Slot loads 3, 3 | 2, 2 | 0, 2 -> GPUs 6, 4, 2.
# Layer 1: expert 0 has three replicas of load 1, every slot carries 1 -> GPUs 2, 2, 2.
WEIGHT = np.array([[6.0, 2.0, 4.0, 0.0], [3.0, 1.0, 1.0, 1.0]])
PHY2LOG = np.array([[0, 0, 1, 2, 3, 2], [0, 1, 2, 3, 0, 0]])
LOADS = np.array([[6.0, 4.0, 2.0], [2.0, 2.0, 2.0]])


def test_gpu_loads_hand_computed():
    loads = fasteplb.gpu_loads(PHY2LOG, WEIGHT, 3)
    assert isinstance(loads, np.ndarray) and loads.dtype == np.float64
    np.testing.assert_array_equal(loads, LOADS)


def test_gpu_loads_other_gpu_count():
    # The same slots as 6 GPUs of one slot, or 1 GPU of six.
    np.testing.assert_array_equal(
        fasteplb.gpu_loads(PHY2LOG, WEIGHT, 6), [[3, 3, 2, 2, 0, 2], [1, 1, 1, 1, 1, 1]]
    )
    np.testing.assert_array_equal(fasteplb.gpu_loads(PHY2LOG, WEIGHT, 1), [[12], [6]])


def test_balancedness_hand_computed():
    # Aggregate: sum of means / sum of maxima = (4 + 2) / (6 + 2).
    assert fasteplb.balancedness(PHY2LOG, WEIGHT, 3) == pytest.approx(0.75, rel=1e-15)
    per_layer = fasteplb.balancedness(PHY2LOG, WEIGHT, 3, per_layer=True)
    assert per_layer.shape == (2,)
    np.testing.assert_allclose(per_layer, [4 / 6, 1.0], rtol=1e-15)


def test_balancedness_of_a_perfectly_balanced_plan_is_one():
    weight = np.array([[5.0, 5.0, 5.0, 5.0], [1.0, 3.0, 2.0, 2.0]])
    phy2log = np.array([[0, 1, 2, 3], [0, 1, 2, 3]])
    assert fasteplb.balancedness(phy2log, weight, 2) == 1.0
    np.testing.assert_array_equal(
        fasteplb.balancedness(phy2log, weight, 2, per_layer=True), [1.0, 1.0]
    )
    # ... and the same layer-1 experts split 1+2 | 3+2 is not balanced.
    worse = np.array([[0, 1, 2, 3], [0, 2, 1, 3]])
    assert fasteplb.balancedness(worse, weight, 2, per_layer=True)[1] == pytest.approx(4 / 5)


def test_layer_without_load_counts_as_balanced():
    weight = np.array([[0.0, 0.0], [1.0, 3.0]])
    phy2log = np.array([[0, 1], [0, 1]])
    np.testing.assert_array_equal(
        fasteplb.balancedness(phy2log, weight, 2, per_layer=True), [1.0, 2 / 3]
    )
    assert fasteplb.balancedness(phy2log, weight, 2) == pytest.approx(2 / 3)
    assert fasteplb.balancedness(phy2log[:1], weight[:1], 2) == 1.0


@pytest.mark.skipif(torch is None, reason="needs torch")
def test_torch_in_torch_out():
    weight = torch.from_numpy(WEIGHT).float()
    phy2log = torch.from_numpy(PHY2LOG)
    loads = fasteplb.gpu_loads(phy2log, weight, 3)
    assert isinstance(loads, torch.Tensor) and loads.dtype == torch.float64
    np.testing.assert_array_equal(loads.numpy(), LOADS)
    per_layer = fasteplb.balancedness(phy2log, weight, 3, per_layer=True)
    assert isinstance(per_layer, torch.Tensor) and per_layer.shape == (2,)
    overall = fasteplb.balancedness(phy2log, weight, 3)
    assert isinstance(overall, float) and overall == pytest.approx(0.75)


def test_metrics_of_a_real_plan():
    weight = make_load("tokens", (5, 64), seed=41)
    phy2log = fasteplb.rebalance_experts(weight, 80, 8, 2, 16)[0]
    loads = fasteplb.gpu_loads(phy2log, weight, 16)
    assert loads.shape == (5, 16)
    np.testing.assert_allclose(loads.sum(axis=1), weight.sum(axis=1), rtol=1e-12)
    per_layer = fasteplb.balancedness(phy2log, weight, 16, per_layer=True)
    np.testing.assert_allclose(per_layer, loads.mean(axis=1) / loads.max(axis=1), rtol=1e-15)
    assert 0.0 < fasteplb.balancedness(phy2log, weight, 16) <= 1.0


@pytest.mark.parametrize(
    ("phy2log", "num_gpus", "match"),
    [
        ([[0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 0, 0]], 3, r"every logical expert"),  # expert 3 missing
        ([[0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 0, 0]], 3, r"entries must lie in \[0, 4\)"),
        ([[0, -1, 1, 2, 3, 2], [0, 1, 2, 3, 0, 0]], 3, r"entries must lie in \[0, 4\)"),
        ([0, 0, 1, 2, 3, 2], 3, r"phy2log must be \[layers=2, slots\]"),
        ([[0, 0, 1, 2, 3, 2]], 3, r"phy2log must be \[layers=2, slots\]"),
        ([[[0, 0, 1, 2, 3, 2]], [[0, 1, 2, 3, 0, 0]]], 3, r"phy2log must be"),
        (PHY2LOG, 4, r"slot count \(6\) must be divisible by num_gpus \(4\)"),
        (PHY2LOG, 0, r"num_gpus must be >= 1"),
    ],
)
@pytest.mark.parametrize(
    "fn", [fasteplb.gpu_loads, fasteplb.balancedness], ids=["gpu_loads", "balancedness"]
)
def test_invalid_plans_raise(fn, phy2log, num_gpus, match):
    with pytest.raises(ValueError, match=match):
        fn(np.array(phy2log), WEIGHT, num_gpus)


def test_invalid_weight_raises():
    with pytest.raises(ValueError, match=r"weight must be 2-D"):
        fasteplb.gpu_loads(PHY2LOG, WEIGHT[0], 3)
    with pytest.raises(TypeError, match=r"num_gpus"):
        fasteplb.gpu_loads(PHY2LOG, WEIGHT, 1.5)


@pytest.mark.parametrize("bad", [-0.5, 3.9, 1.5])
def test_non_integer_phy2log_is_rejected(bad):
    phy2log = PHY2LOG.astype(np.float64)
    phy2log[0, 0] = bad
    with pytest.raises(ValueError, match="phy2log"):
        fasteplb.gpu_loads(phy2log, WEIGHT, 3)
