"""The chunked reference scan against the sequential fp64 oracle: forward, last state, every gradient."""

from __future__ import annotations

import zlib

import pytest
import torch

from mamba_bio_audio.kernels.selective_scan import reference
from mamba_bio_audio.kernels.selective_scan.naive import selective_scan_naive
from mamba_bio_audio.kernels.selective_scan.reference import linear_scan, selective_scan_chunked

from conftest import rel_err
from helpers import scan_inputs, tensor_inputs

CASES = [
    # batch, dim, seqlen, d_state, bc, groups, chunk_size, softplus
    (2, 5, 37, 4, "input", 1, 8, True),
    (1, 3, 1, 1, "input", 1, None, True),
    (3, 6, 50, 16, "grouped", 3, 16, False),
    (2, 4, 33, 8, "fixed", 1, 7, True),
    (2, 8, 64, 4, "grouped", 2, 64, True),
    (1, 7, 129, 64, "input", 1, 32, True),
]


def _run_both(case, seed, options):
    batch, dim, seqlen, d_state, bc, groups, chunk, softplus = case
    kw = scan_inputs(batch, dim, seqlen, d_state, bc=bc, groups=groups, seed=seed, **options)
    if not softplus:  # without softplus, dt = delta + bias must stay positive for a stable (decaying) scan
        kw["delta"] = kw["delta"].abs() + 0.01
        kw["delta_bias"] = None if kw["delta_bias"] is None else kw["delta_bias"].abs()
    leaves = tensor_inputs(kw)
    ref_leaves = {k: v.clone().requires_grad_() for k, v in leaves.items()}
    ours_leaves = {k: v.float().requires_grad_() for k, v in leaves.items()}
    ref_out, ref_last = selective_scan_naive(**{**kw, **ref_leaves}, delta_softplus=softplus, return_last_state=True)
    out, last = selective_scan_chunked(**{**kw, **ours_leaves}, delta_softplus=softplus, return_last_state=True,
                                       chunk_size=chunk)
    g = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(ref_out.shape, generator=g, dtype=torch.float64)
    grad_last = torch.randn(ref_last.shape, generator=g, dtype=torch.float64)
    torch.autograd.backward([ref_out, ref_last], [grad_out, grad_last])
    torch.autograd.backward([out, last], [grad_out.float(), grad_last.float()])
    return (out, last, ours_leaves), (ref_out, ref_last, ref_leaves)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("options", [{}, {"with_z": False, "with_D": False, "with_bias": False, "with_init": False}])
def test_chunked_matches_oracle_fp32(case, options):
    seed = zlib.crc32(repr((case, sorted(options))).encode())  # a different input per case, stable across runs
    (out, last, leaves), (ref_out, ref_last, ref_leaves) = _run_both(case, seed, options)
    assert out.dtype == torch.float32
    assert rel_err(out, ref_out) < 1e-5
    assert rel_err(last, ref_last) < 1e-5
    for name, ref in ref_leaves.items():
        assert leaves[name].grad is not None, name
        assert rel_err(leaves[name].grad, ref.grad) < 1e-5, name


def test_chunked_gradcheck_fp64():
    kw = scan_inputs(2, 3, 9, 2, bc="grouped", groups=3, seed=3)
    names = list(tensor_inputs(kw))

    def f(*tensors):
        out, last = selective_scan_chunked(**{**kw, **dict(zip(names, tensors))}, delta_softplus=True,
                                           return_last_state=True, chunk_size=4)
        return out, last

    inputs = tuple(kw[n].clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("sequential", [False, True])
def test_linear_scan_gradcheck_both_algorithms(sequential, monkeypatch):
    monkeypatch.setattr(reference, "SEQUENTIAL_MIN_CHAINS", 1 if sequential else 10**9)
    g = torch.Generator().manual_seed(5)
    a = torch.rand(2, 3, 11, 4, generator=g, dtype=torch.float64).requires_grad_()
    x = torch.randn(2, 3, 11, 4, generator=g, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(2, 3, 4, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(linear_scan, (a, x, h0))


def test_state_chaining():
    """Scanning [x1; x2] equals scanning x2 from x1's last state."""
    kw = scan_inputs(2, 4, 40, 8, seed=11, dtype=torch.float32)
    kw["initial_state"] = None
    full, full_last = selective_scan_chunked(**kw, delta_softplus=True, return_last_state=True)

    def part(lo, hi, init):
        sliced = {k: (v[..., lo:hi] if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
        sliced["initial_state"] = init
        return selective_scan_chunked(**sliced, delta_softplus=True, return_last_state=True)

    out1, last1 = part(0, 17, None)
    out2, last2 = part(17, 40, last1)
    assert rel_err(torch.cat([out1, out2], -1), full) < 1e-6
    assert rel_err(last2, full_last) < 1e-6


def test_bf16_inputs_keep_dtype_and_accuracy():
    kw = scan_inputs(2, 6, 45, 16, seed=21)
    ref = selective_scan_naive(**kw, delta_softplus=True)
    low = {k: (v.bfloat16() if k in ("u", "delta", "z", "B", "C") else (v.float() if torch.is_tensor(v) else v))
           for k, v in kw.items()}
    out = selective_scan_chunked(**low, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    exact = selective_scan_naive(**{k: (v.double() if torch.is_tensor(v) else v) for k, v in low.items()},
                                 delta_softplus=True)
    assert rel_err(out, exact) < 1e-2
    assert rel_err(out, ref) < 0.1  # bf16 rounding of the inputs themselves


def test_long_sequence_runs_and_recomputes(monkeypatch):
    monkeypatch.setattr(reference, "RECOMPUTE_ABOVE_ELEMENTS", 0)  # force the checkpointed path
    kw = scan_inputs(1, 4, 300, 4, seed=2, dtype=torch.float32)
    leaves = {k: v.requires_grad_() for k, v in tensor_inputs(kw).items()}
    out = selective_scan_chunked(**{**kw, **leaves}, delta_softplus=True, chunk_size=64)
    out.square().sum().backward()
    grads_ckpt = {k: v.grad.clone() for k, v in leaves.items()}
    monkeypatch.setattr(reference, "RECOMPUTE_ABOVE_ELEMENTS", 10**12)
    for v in leaves.values():
        v.grad = None
    out2 = selective_scan_chunked(**{**kw, **leaves}, delta_softplus=True, chunk_size=64)
    out2.square().sum().backward()
    assert torch.equal(out, out2)
    for k, v in leaves.items():
        assert rel_err(v.grad, grads_ckpt[k]) < 1e-6, k


def test_seqlen_zero():
    kw = scan_inputs(2, 3, 0, 4, seed=1, dtype=torch.float32)
    out, last = selective_scan_chunked(**kw, return_last_state=True)
    assert out.shape == (2, 3, 0)
    assert torch.equal(last, kw["initial_state"])
