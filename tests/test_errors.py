"""Bad arguments: the API raises ValueError/TypeError naming the argument, and the reference
raises the same exception type with the same message."""

import time

import fasteplb
import numpy as np
import pytest
from fasteplb import _checks, reference
from helpers import assert_same, both

try:
    import torch
except ImportError:  # the wheels' test run has numpy only: the torch cases skip
    torch = None

W = np.ones((2, 8))  # valid base load: 2 layers x 8 experts
PLAN = (16, 4, 2, 4)  # num_replicas, num_groups, num_nodes, num_gpus


def with_value(index, value):
    w = W.copy()
    w[index] = value
    return w


# (id, function, args, kwargs, exception type, regex the message must match)
CASES = [
    # weight values
    (
        "negative",
        "rebalance_experts",
        (with_value((1, 3), -1.0), *PLAN),
        {},
        ValueError,
        r"^weight must be finite and non-negative; found -1 at \[1, 3\]$",
    ),
    (
        "tiny-negative",
        "rebalance_experts",
        (with_value((0, 2), -5e-324), *PLAN),
        {},
        ValueError,
        r"weight .*found -4\.94066e-324 at \[0, 2\]",
    ),
    (
        "nan",
        "rebalance_experts",
        (with_value((0, 5), np.nan), *PLAN),
        {},
        ValueError,
        r"weight .*found nan at \[0, 5\]",
    ),
    (
        "neg-nan",
        "rebalance_experts",
        (with_value((0, 5), -np.nan), *PLAN),
        {},
        ValueError,
        r"weight .*found nan at \[0, 5\]",
    ),
    (
        "inf",
        "rebalance_experts",
        (with_value((1, 0), np.inf), *PLAN),
        {},
        ValueError,
        r"weight .*found inf at \[1, 0\]",
    ),
    (
        "-inf",
        "rebalance_experts",
        (with_value((1, 7), -np.inf), *PLAN),
        {},
        ValueError,
        r"weight .*found -inf at \[1, 7\]",
    ),
    (
        "first-bad-wins",
        "rebalance_experts",
        (np.array([[1, 1, 1, 1, 1, 1, 1, -3.5], [np.nan, 1, 1, 1, 1, 1, 1, 1]]), *PLAN),
        {},
        ValueError,
        r"found -3\.5 at \[0, 7\]",
    ),
    (
        "nan-packing",
        "balanced_packing",
        (with_value((1, 1), np.nan), 4),
        {},
        ValueError,
        r"weight .*nan at \[1, 1\]",
    ),
    (
        "neg-replicate",
        "replicate_experts",
        (with_value((0, 0), -2.0), 9),
        {},
        ValueError,
        r"weight .*-2 at \[0, 0\]",
    ),
    # weight shape
    ("1-D", "rebalance_experts", (np.ones(8), *PLAN), {}, ValueError, r"weight must be 2-D"),
    (
        "4-D",
        "rebalance_experts",
        (np.ones((2, 8, 1, 1)), *PLAN),
        {},
        ValueError,
        r"weight must be 2-D \[layers, experts\] or 3-D .*\(2, 8, 1, 1\)",
    ),
    ("0-D", "replicate_experts", (np.float64(3.0), 4), {}, ValueError, r"weight must be 2-D"),
    (
        "0-layers",
        "rebalance_experts",
        (np.ones((0, 8)), *PLAN),
        {},
        ValueError,
        r"weight must not be empty.*\(0, 8\)",
    ),
    (
        "0-experts",
        "rebalance_experts",
        (np.ones((2, 0)), *PLAN),
        {},
        ValueError,
        r"weight must not be empty.*\(2, 0\)",
    ),
    (
        "empty-packing",
        "balanced_packing",
        (np.ones((3, 0)), 1),
        {},
        ValueError,
        r"weight must not be empty",
    ),
    (
        "too-many-experts",
        "replicate_experts",
        (np.zeros((1, (1 << 20) + 1)), 1 << 21),
        {},
        ValueError,
        r"weight has 1048577 experts",
    ),
    # weight type
    ("complex", "rebalance_experts", (W.astype(complex), *PLAN), {}, TypeError, r"weight"),
    ("bool", "rebalance_experts", (W.astype(bool), *PLAN), {}, TypeError, r"weight"),
    ("str", "rebalance_experts", (W.astype(str), *PLAN), {}, TypeError, r"weight"),
    (
        "object",
        "balanced_packing",
        (np.array([[1, None]], dtype=object), 1),
        {},
        TypeError,
        r"weight",
    ),
    ("ragged", "balanced_packing", ([[1.0, 2.0], [3.0]], 1), {}, TypeError, r"weight"),
    ("none", "replicate_experts", (None, 4), {}, TypeError, r"weight"),
    *(
        []
        if torch is None
        else [
            (
                "torch-complex",
                "rebalance_experts",
                (torch.ones(2, 8, dtype=torch.complex64), *PLAN),
                {},
                TypeError,
                r"weight must have a real or integer dtype",
            ),
            (
                "torch-bool",
                "rebalance_experts",
                (torch.ones(2, 8, dtype=torch.bool), *PLAN),
                {},
                TypeError,
                r"weight must have a real or integer dtype",
            ),
        ]
    ),
    # plan sizes
    (
        "replicas<experts",
        "rebalance_experts",
        (W, 4, 4, 2, 4),
        {},
        ValueError,
        r"num_replicas must be >= the number of experts \(8\), got 4",
    ),
    (
        "replicas%gpus",
        "rebalance_experts",
        (W, 18, 4, 2, 4),
        {},
        ValueError,
        r"num_replicas \(18\) must be divisible by num_gpus \(4\)",
    ),
    (
        "gpus%nodes",
        "rebalance_experts",
        (W, 24, 4, 3, 4),
        {},
        ValueError,
        r"num_gpus \(4\) must be divisible by num_nodes \(3\)",
    ),
    (
        "experts%groups",
        "rebalance_experts",
        (W, 16, 3, 2, 4),
        {},
        ValueError,
        r"experts \(8\) must be divisible by num_groups \(3\)",
    ),
    (
        "replicas=0",
        "rebalance_experts",
        (W, 0, 4, 2, 4),
        {},
        ValueError,
        r"num_replicas must be >= 1, got 0",
    ),
    ("groups<0", "rebalance_experts", (W, 16, -4, 2, 4), {}, ValueError, r"num_groups .*-4"),
    ("nodes<0", "rebalance_experts", (W, 16, 4, -2, 4), {}, ValueError, r"num_nodes .*-2"),
    ("gpus=0", "rebalance_experts", (W, 16, 4, 2, 0), {}, ValueError, r"num_gpus .*got 0"),
    (
        "replicas=2.5",
        "rebalance_experts",
        (W, 2.5, 4, 2, 4),
        {},
        TypeError,
        r"num_replicas must be an integer, got float",
    ),
    ("groups=4.0", "rebalance_experts", (W, 16, 4.0, 2, 4), {}, TypeError, r"num_groups"),
    ("nodes='2'", "rebalance_experts", (W, 16, 4, "2", 4), {}, TypeError, r"num_nodes"),
    (
        "gpus=True",
        "rebalance_experts",
        (W, 16, 4, 2, True),
        {},
        TypeError,
        r"num_gpus must be an integer, got bool",
    ),
    ("replicas=True", "rebalance_experts", (W, True, 4, 2, 4), {}, TypeError, r"num_replicas"),
    ("replicas=None", "rebalance_experts", (W, None, 4, 2, 4), {}, TypeError, r"num_replicas"),
    (
        "replicas=1e12",
        "rebalance_experts",
        (W, 10**12, 4, 2, 4),
        {},
        ValueError,
        rf"num_replicas must be <= {_checks.MAX_REPLICAS}",
    ),
    (
        "replicas=2**70",
        "rebalance_experts",
        (W, 2**70, 4, 2, 4),
        {},
        ValueError,
        r"num_replicas must be <=",
    ),
    (
        "too-many-elements",
        "rebalance_experts",
        (np.ones((4096, 1)), 1 << 20, 1, 1, 1),
        {"refine": "none"},
        ValueError,
        r"phy2log of 4096 x 1048576 would exceed",
    ),
    # options
    (
        "refine=1",
        "rebalance_experts",
        (W, *PLAN),
        {"refine": 1},
        TypeError,
        r"refine must be a str, got int",
    ),
    ("refine=None", "balanced_packing", (W, 2), {"refine": None}, TypeError, r"refine"),
    (
        "rounds=-1",
        "rebalance_experts",
        (W, *PLAN),
        {"swap_rounds": -1},
        ValueError,
        r"swap_rounds must be >= 0, got -1",
    ),
    ("rounds=1.5", "balanced_packing", (W, 2), {"swap_rounds": 1.5}, TypeError, r"swap_rounds"),
    ("rounds=False", "balanced_packing", (W, 2), {"swap_rounds": False}, TypeError, r"swap_rounds"),
    # balanced_packing / replicate_experts sizes
    (
        "packs∤n",
        "balanced_packing",
        (W, 3),
        {},
        ValueError,
        r"items \(8\) must be divisible by num_packs \(3\)",
    ),
    ("packs>n", "balanced_packing", (W, 16), {}, ValueError, r"num_packs \(16\)"),
    ("packs=0", "balanced_packing", (W, 0), {}, ValueError, r"num_packs must be >= 1"),
    ("packs=2.5", "balanced_packing", (W, 2.5), {}, TypeError, r"num_packs"),
    ("packs=True", "balanced_packing", (W, True), {}, TypeError, r"num_packs"),
    (
        "phy<n",
        "replicate_experts",
        (W, 7),
        {},
        ValueError,
        r"num_phy must be >= the number of experts \(8\), got 7",
    ),
    ("phy=0", "replicate_experts", (W, 0), {}, ValueError, r"num_phy must be >= 1"),
    ("phy=-3", "replicate_experts", (W, -3), {}, ValueError, r"num_phy"),
    ("phy=9.0", "replicate_experts", (W, 9.0), {}, TypeError, r"num_phy"),
    ("phy=1e12", "replicate_experts", (W, 10**12), {}, ValueError, r"num_phy must be <="),
    # argument checks come before value checks, in the same order in both
    (
        "size-before-values",
        "rebalance_experts",
        (with_value((0, 0), np.nan), 18, 4, 2, 4),
        {},
        ValueError,
        r"num_replicas \(18\)",
    ),
    (
        "refine-before-weight",
        "rebalance_experts",
        (None, *PLAN),
        {"refine": 1},
        TypeError,
        r"refine",
    ),
]


def test_unknown_refine_mode_is_rejected():
    # The reference implements only the modes it is the oracle for, and says so.
    with pytest.raises(
        ValueError,
        match=r"refine must be one of \('local', 'swap', 'none'\), "
        r"got 'bogus'",
    ):
        fasteplb.rebalance_experts(W, *PLAN, refine="bogus")
    with pytest.raises(ValueError, match="got 'SWAP'"):  # modes are case-sensitive
        fasteplb.rebalance_experts(W, *PLAN, refine="SWAP")
    for bad in ("bogus", "local", "SWAP"):
        with pytest.raises(
            ValueError,
            match=rf"refine must be one of \('swap', 'none'\), "
            rf"got '{bad}'",
        ):
            reference.rebalance_experts(W, *PLAN, refine=bad)


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "exc", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_api_and_reference_raise_the_same(name, args, kwargs, exc, match):
    api, ref = both(name)
    start = time.perf_counter()
    with pytest.raises(exc, match=match) as api_err:
        api(*args, **kwargs)
    assert time.perf_counter() - start < 1.0  # fails fast, no giant allocation
    with pytest.raises(exc) as ref_err:
        ref(*args, **kwargs)
    assert type(ref_err.value) is type(api_err.value)
    assert str(ref_err.value) == str(api_err.value)


@pytest.mark.parametrize("name", ["rebalance_experts", "balanced_packing", "replicate_experts"])
@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        (0, ValueError, r"num_threads must be >= 1, got 0"),
        (-1, ValueError, r"num_threads must be >= 1, got -1"),
        (2.0, TypeError, r"num_threads must be an integer, got float"),
        (True, TypeError, r"num_threads must be an integer, got bool"),
        ("4", TypeError, r"num_threads"),
    ],
)
def test_num_threads_errors(name, value, exc, match):
    args = {"rebalance_experts": PLAN, "balanced_packing": (2,), "replicate_experts": (9,)}[name]
    with pytest.raises(exc, match=match):
        getattr(fasteplb, name)(W, *args, num_threads=value)


def test_row_sum_above_1e300_is_rejected():
    weight = np.full((1, 256), 1e299)  # every entry finite, the row sums to 2.56e301
    with pytest.raises(ValueError, match=r"^weight's row sums must be <= 1e300; row 0 sums"):
        fasteplb.rebalance_experts(weight, 288, 8, 4, 32)
    with pytest.raises(ValueError, match=r"weight's row sums"):
        fasteplb.balanced_packing(weight, 8)
    with pytest.raises(ValueError, match=r"weight's row sums"):
        fasteplb.replicate_experts(weight, 300)
    # Just above the limit (2e300) is rejected, in any row; exactly at it is fine.
    over = np.zeros((3, 8))
    over[2, [1, 6]] = 1e300
    with pytest.raises(ValueError, match=r"row 2 sums to 2e\+300"):
        fasteplb.rebalance_experts(over, 8, 1, 1, 1)
    at_limit = np.zeros((3, 8))
    at_limit[:, 3] = 1e300
    plan = fasteplb.rebalance_experts(at_limit, 16, 1, 1, 2)
    assert (plan[2][:, 3] == 9).all()  # every spare replica goes to the only loaded expert


@pytest.mark.parametrize("name", ["rebalance_experts", "balanced_packing", "replicate_experts"])
def test_reference_rejects_row_sum_above_1e300(name):
    weight = np.full((1, 256), 1e299)
    args = {
        "rebalance_experts": (288, 8, 4, 32),
        "balanced_packing": (8,),
        "replicate_experts": (300,),
    }[name]
    api, ref = both(name)
    with pytest.raises(ValueError) as api_err:
        api(weight, *args)
    with pytest.raises(ValueError) as ref_err:
        ref(weight, *args)
    assert str(ref_err.value) == str(api_err.value)


def test_swap_rounds_limit_like_reference():
    api, ref = both("balanced_packing")
    weight = W * np.arange(1, 9)
    limit = _checks.MAX_SWAP_ROUNDS
    assert_same(api(weight, 2, swap_rounds=limit), ref(weight, 2, swap_rounds=limit))
    for fn in (api, ref):
        with pytest.raises(ValueError, match=rf"swap_rounds must be <= {limit} with refine"):
            fn(weight, 2, swap_rounds=2**31)
    # refine="none" never swaps: any count is accepted, as before.
    assert_same(
        api(weight, 2, refine="none", swap_rounds=2**31),
        ref(weight, 2, refine="none", swap_rounds=2**31),
    )


def test_huge_num_threads_accepted():
    assert_same(
        fasteplb.replicate_experts(W, 9, num_threads=2**31),
        fasteplb.replicate_experts(W, 9, num_threads=1),
    )


@pytest.mark.parametrize(
    "count",
    [
        np.int64(16),
        np.int32(16),
        pytest.param(
            torch and torch.tensor(16),
            id="torch-0d",
            marks=pytest.mark.skipif(torch is None, reason="needs torch"),
        ),
    ],
    ids=["np.int64", "np.int32", "torch-0d"],
)
def test_integer_like_counts_are_accepted(count):
    api, ref = both("rebalance_experts")
    want = api(W, 16, 4, 2, 4)
    assert_same(api(W, count, 4, 2, 4), want)
    assert_same(ref(W, count, 4, 2, 4), want)
