"""Packed sequences (``seq_idx``) in the causal conv: several sequences packed into one row give exactly what each
gives alone (out, final_state and every gradient), for the torch reference and the Triton kernels (CPU under
TRITON_INTERPRET=1; ``-m gpu`` on CUDA with TRITON_INTERPRET=0).

The one-by-one result is the float64 reference run on each sequence's slice of the same leaves, the row's first
sequence from initial_state and the others from zeros, put back in the packed layout.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402

from mamba_bio_audio import ops  # noqa: E402
from mamba_bio_audio.kernels.causal_conv1d.reference import causal_conv1d_ref  # noqa: E402
from mamba_bio_audio.kernels.causal_conv1d.triton_conv import causal_conv1d_triton  # noqa: E402

from helpers import assert_all_match, poison_empty  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
cpu_only = pytest.mark.skipif(not INTERPRETING, reason="CPU cases need TRITON_INTERPRET=1")
gpu_only = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING,
                                                reason="needs CUDA and TRITON_INTERPRET=0")]
NAMES = ["out", "final_state", "x", "weight", "bias", "initial_state"]


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    poison_empty(monkeypatch)


def seq_idx_of(lengths, device="cpu"):
    rows = [[i for i, n in enumerate(row) for _ in range(n)] for row in lengths]
    return torch.tensor(rows, dtype=torch.int32, device=device)


def make_leaves(batch, dim, seqlen, width, bias=True, init=True, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    leaves = [torch.randn(batch, dim, seqlen, generator=g, dtype=torch.float64),
              torch.randn(dim, width, generator=g, dtype=torch.float64) * 0.5,
              torch.randn(dim, generator=g, dtype=torch.float64) if bias else None,
              torch.randn(batch, dim, width - 1, generator=g, dtype=torch.float64) if init else None]
    return [x.to(device) if x is not None else None for x in leaves]


def one_by_one(xs, lengths, activation):
    x, weight, bias, init = xs
    rows, finals = [], []
    for r, row in enumerate(lengths):
        outs, start = [], 0
        for i, n in enumerate(row):
            out, final = causal_conv1d_ref(x[r:r + 1, :, start:start + n], weight, bias, activation,
                                           init[r:r + 1] if init is not None and i == 0 else None, True)
            outs.append(out)
            start += n
        rows.append(torch.cat(outs, dim=2))
        finals.append(final)
    return torch.cat(rows), torch.cat(finals)


def results(fn, leaves, dtype, seed):
    xs = [x.detach().to(dtype).requires_grad_(True) if x is not None else None for x in leaves]
    out, final = fn(xs)
    g = torch.Generator().manual_seed(seed + 1)
    loss = (out * torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)).sum()
    loss = loss + (final * torch.randn(final.shape, generator=g, dtype=torch.float64).to(final)).sum()
    present = [x for x in xs if x is not None]
    grads = iter(torch.autograd.grad(loss, present))
    return [out, final] + [next(grads) if x is not None else None for x in xs]


def assert_packed_matches(conv, leaves, lengths, activation, *, dtype=torch.float32, seed=0, tol=1e-5, **kw):
    seq_idx = seq_idx_of(lengths, leaves[0].device)
    rounded = [x.to(dtype).double() if x is not None else None for x in leaves]
    ref = results(lambda xs: one_by_one(xs, lengths, activation), rounded, torch.float64, seed)
    got = results(lambda xs: conv(*xs[:3], activation, xs[3], return_final_state=True, seq_idx=seq_idx, **kw), leaves,
                  dtype, seed)
    assert_all_match(NAMES, got, ref, tol)


# 19 steps; Triton time blocks of 8 below: starts at t = 8 and 16 (block edges), at t = 1 (a first sequence of one
# step), at the last step, sequences shorter than the window, a row with one sequence.
LENGTHS = [[[1, 7, 8, 2, 1], [8, 1, 10]], [[3, 16], [19]]]


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("lengths", LENGTHS, ids=["many", "few"])
@pytest.mark.parametrize("activation,bias,init", [("silu", True, True), (None, False, False)])
def test_reference_packed_equals_one_by_one(width, lengths, activation, bias, init):
    leaves = make_leaves(2, 3, 19, width, bias, init, seed=width)
    assert_packed_matches(causal_conv1d_ref, leaves, lengths, activation, dtype=torch.float64, tol=1e-12)


@cpu_only
@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("lengths", LENGTHS, ids=["many", "few"])
@pytest.mark.parametrize("activation,bias,init", [("silu", True, True), (None, False, False)])
def test_triton_packed_equals_one_by_one(width, lengths, activation, bias, init):
    leaves = make_leaves(2, 6, 19, width, bias, init, seed=10 + width)
    assert_packed_matches(causal_conv1d_triton, leaves, lengths, activation, block_t=8, block_d=4)


@cpu_only
def test_triton_one_sequence_per_row_is_unchanged():
    x, weight, bias, init = (t.float() for t in make_leaves(2, 6, 19, 4, seed=20))
    kw = dict(return_final_state=True, block_t=8, block_d=4)
    with_idx = causal_conv1d_triton(x, weight, bias, "silu", init, seq_idx=torch.full((2, 19), 3), **kw)
    without = causal_conv1d_triton(x, weight, bias, "silu", init, **kw)
    for a, b in zip(with_idx, without):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("conv", [causal_conv1d_ref, pytest.param(causal_conv1d_triton, marks=cpu_only)],
                         ids=["reference", "triton"])
def test_ids_only_matter_where_they_change(conv):
    """A sequence is a run of equal ids: an id used again later (5 below) starts a new sequence all the same."""
    x, weight, bias, init = (t.float() for t in make_leaves(1, 3, 7, 4, seed=22))
    reused = conv(x, weight, bias, "silu", init, True, seq_idx=torch.tensor([[5, 5, 2, 2, 5, 5, 5]]))
    numbered = conv(x, weight, bias, "silu", init, True, seq_idx=torch.tensor([[0, 0, 1, 1, 2, 2, 2]]))
    for a, b in zip(reused, numbered):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ops_reference_backend_takes_seq_idx():
    leaves = make_leaves(2, 3, 19, 4, seed=21)
    assert_packed_matches(lambda *a, **k: ops.causal_conv1d_fn(*a, backend="reference", **k), leaves, LENGTHS[0],
                          "silu", dtype=torch.float64, tol=1e-12)


def test_bad_seq_idx_is_refused():
    x, weight = torch.randn(2, 3, 5), torch.randn(3, 4)
    with pytest.raises(ValueError, match="shape"):
        ops.causal_conv1d_fn(x, weight, backend="reference", seq_idx=torch.zeros(2, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="integer"):
        ops.causal_conv1d_fn(x, weight, backend="reference", seq_idx=torch.zeros(2, 5))


def random_lengths(batch, seqlen, seed, max_len):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        row, left = [], seqlen
        while left:
            n = min(left, int(torch.randint(1, max_len + 1, (1,), generator=g)))
            row.append(n)
            left -= n
        rows.append(row)
    return rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=gpu_only)])
def test_gpu_triton_packed_matches_reference(device, dtype, width):
    """Triton on CUDA with seq_idx vs the float64 reference with the same seq_idx, lengths 1..300 packed into
    rows of 2048 (the reference is checked against the one-by-one runs above)."""
    leaves = make_leaves(2, 96, 2048, width, seed=7, device=device)
    seq_idx = seq_idx_of(random_lengths(2, 2048, 7, 300), device)
    ref = results(lambda xs: causal_conv1d_ref(*xs[:3], "silu", xs[3], return_final_state=True, seq_idx=seq_idx),
                  [x.to(dtype).double() for x in leaves], torch.float64, 7)
    got = results(lambda xs: causal_conv1d_triton(*xs[:3], "silu", xs[3], return_final_state=True, seq_idx=seq_idx),
                  leaves, dtype, 7)
    assert_all_match(NAMES, got, ref, 1e-5 if dtype == torch.float32 else 1e-2)


def test_cuda_backend_with_states_refuses_seq_idx(monkeypatch):
    """The causal-conv1d package reads seq_idx only without initial / final states: a clear error otherwise."""
    monkeypatch.setattr(ops, "_load", lambda module, name: (lambda *a, **k: None))
    x, weight, init = torch.randn(1, 3, 5), torch.randn(3, 4), torch.randn(1, 3, 3)
    with pytest.raises(ValueError, match="seq_idx"):
        ops.causal_conv1d_fn(x, weight, initial_state=init, backend="cuda", seq_idx=torch.zeros(1, 5, dtype=torch.int32))


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=gpu_only)])
def test_gpu_cuda_package_packed_matches_reference(device):
    """The causal-conv1d package's own seq_idx (when installed) agrees with the reference's semantics."""
    pytest.importorskip("causal_conv1d")
    x, weight, bias, _ = make_leaves(2, 64, 1024, 4, seed=8, device=device)
    seq_idx = seq_idx_of(random_lengths(2, 1024, 8, 200), device)
    got = ops.causal_conv1d_fn(x.float(), weight.float(), bias.float(), "silu", backend="cuda", seq_idx=seq_idx)
    ref = causal_conv1d_ref(x, weight, bias, "silu", seq_idx=seq_idx)
    assert_all_match(["out"], [got], [ref], 1e-5)
