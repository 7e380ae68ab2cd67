"""Input kinds: torch dtypes / layouts / devices, numpy, Python lists; outputs follow input."""

import fasteplb
import numpy as np
import pytest
from helpers import assert_same, check_plan, make_load

torch = pytest.importorskip("torch")  # the wheels' test run has numpy only

SIZES = (40, 8, 2, 8)  # for 32 experts
# Small integers: exactly representable in every dtype below, uint8 and bfloat16 included.
VALUES = make_load("tokens", (4, 32), seed=31) % 200

CALLS = {
    "rebalance": lambda w, **kw: fasteplb.rebalance_experts(w, *SIZES, **kw),
    "packing": lambda w, **kw: fasteplb.balanced_packing(w, 4, **kw),
    "replicate": lambda w, **kw: fasteplb.replicate_experts(w, 50, **kw),
}
DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.int8,
    torch.int16,
]


def assert_torch_int64(outputs, device="cpu"):
    for out in outputs:
        assert isinstance(out, torch.Tensor)
        assert out.dtype == torch.int64
        assert out.device == torch.device(device)
        assert not out.requires_grad


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_dtypes_match_numpy(dtype, name):
    values = VALUES % 100 if dtype == torch.int8 else VALUES
    tensor = torch.from_numpy(values).to(dtype)
    got = CALLS[name](tensor)
    assert_torch_int64(got)
    want = CALLS[name](values)
    assert all(isinstance(w, np.ndarray) for w in want)
    assert_same(got, want)


def test_fractional_float32_equals_its_float64_value():
    t = torch.from_numpy(make_load("float", (4, 32), seed=32)).float()
    assert_same(CALLS["rebalance"](t), CALLS["rebalance"](t.double().numpy()))


LAYOUTS = {
    "transposed": lambda t: t.T.contiguous().T,
    "strided-slice": lambda t: torch.cat([t, t], dim=1).reshape(4, 32, 2)[:, :, 0],
    "every-other-row": lambda t: torch.stack([t, torch.zeros_like(t)], 1).reshape(8, 32)[::2],
    "expanded": lambda t: t[:1].expand(4, 32),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.int64], ids=str)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_non_contiguous_equals_contiguous(layout, dtype):
    base = torch.from_numpy(VALUES).to(dtype)
    view = LAYOUTS[layout](base)
    assert not view.is_contiguous()
    want = CALLS["rebalance"](view.contiguous())
    got = CALLS["rebalance"](view)
    assert_same(got, want)
    check_plan(view, *got, *SIZES)


def test_non_contiguous_numpy_equals_contiguous():
    fortran = np.asfortranarray(VALUES)
    strided = np.repeat(VALUES, 2, axis=1)[:, ::2]
    want = CALLS["rebalance"](VALUES)
    assert_same(CALLS["rebalance"](fortran), want)
    assert_same(CALLS["rebalance"](strided), want)
    assert_same(CALLS["rebalance"](VALUES.astype(">f8")), want)  # big-endian


def test_read_only_and_unaligned_numpy_input():
    want = CALLS["rebalance"](VALUES)
    read_only = VALUES.copy()
    read_only.flags.writeable = False
    assert_same(CALLS["rebalance"](read_only), want)
    buffer = np.zeros(VALUES.nbytes + 1, dtype=np.uint8)
    unaligned = np.ndarray(VALUES.shape, dtype=np.float64, buffer=buffer, offset=1)
    unaligned[...] = VALUES
    assert not unaligned.flags.aligned
    assert_same(CALLS["rebalance"](unaligned), want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_requires_grad_input(dtype):
    t = torch.from_numpy(VALUES).to(dtype).requires_grad_(True)
    for name, call in CALLS.items():
        got = call(t)
        assert_torch_int64(got)
        assert_same(got, call(VALUES))
    assert t.grad is None


@pytest.mark.parametrize("name", sorted(CALLS))
def test_input_is_not_modified_and_outputs_do_not_alias_it(name):
    t = torch.from_numpy(VALUES.copy())  # float64 contiguous: the zero-copy path
    before = t.clone()
    outputs = CALLS[name](t)
    assert torch.equal(t, before)
    for out in outputs:
        out.fill_(-7)
    assert torch.equal(t, before)


def test_numpy_in_numpy_out():
    for name, call in CALLS.items():
        for out in call(VALUES):
            assert type(out) is np.ndarray and out.dtype == np.int64, name


@pytest.mark.parametrize(
    "convert", [lambda a: a.tolist(), lambda a: tuple(map(tuple, a))], ids=["list", "tuple"]
)
def test_python_sequences_in_numpy_out(convert):
    for name, call in CALLS.items():
        got = call(convert(VALUES.astype(int)))
        assert all(type(out) is np.ndarray for out in got), name
        assert_same(got, call(VALUES))


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("refine", ["none", "swap"])
def test_int_and_float_inputs_of_equal_values_give_the_same_plan(name, refine):
    kw = {} if name == "replicate" else {"refine": refine}
    ints = VALUES.astype(np.int64)
    assert_same(CALLS[name](ints, **kw), CALLS[name](VALUES, **kw))
    assert_same(CALLS[name](torch.from_numpy(ints), **kw), CALLS[name](VALUES, **kw))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64], ids=str)
@pytest.mark.parametrize("name", sorted(CALLS))
def test_cuda_in_cuda_out(name, dtype):
    device = torch.device("cuda", torch.cuda.current_device())
    t = torch.from_numpy(VALUES).to(dtype)
    got = CALLS[name](t.to(device))
    assert_torch_int64(got, device)
    for out in got:
        assert out.is_contiguous()
    assert_same(got, CALLS[name](t))
    if name == "rebalance":
        loads = fasteplb.gpu_loads(got[0], t.to(device), SIZES[3])
        assert loads.device == device
        assert torch.equal(loads.cpu(), fasteplb.gpu_loads(got[0].cpu(), t, SIZES[3]))
