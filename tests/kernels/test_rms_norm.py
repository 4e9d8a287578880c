"""Triton residual add + RMSNorm (forward and every gradient) vs the fp64 torch reference."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402

from mamba_bio_audio.kernels.rms_norm import triton_norm  # noqa: E402
from mamba_bio_audio.kernels.rms_norm.reference import add_rms_norm_ref  # noqa: E402
from mamba_bio_audio.kernels.rms_norm.triton_norm import add_rms_norm_triton  # noqa: E402

from helpers import assert_all_match, interpreting, poison_empty, rel  # noqa: E402

INTERPRETING = interpreting()
cpu_only = pytest.mark.skipif(not INTERPRETING, reason="CPU cases need TRITON_INTERPRET=1")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING, reason="needs CUDA and TRITON_INTERPRET=0")


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    poison_empty(monkeypatch)


def leaves(shape, layout, with_residual, x_dtype, residual_dtype, device, seed):
    """x in the asked layout ("contiguous" or "transposed": a (..., d) view of a (d, M) matrix, as a mixer's
    output is), residual contiguous, weight near 1."""
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    if layout == "transposed":
        x = torch.randn(d, *shape[:-1], generator=g, dtype=torch.float64).movedim(0, -1)
    else:
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
    residual = torch.randn(*shape, generator=g, dtype=torch.float64) * 2 if with_residual else None
    weight = 1 + 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    return (x.to(device, x_dtype), None if residual is None else residual.to(device, residual_dtype),
            weight.to(device, torch.float32))


def check(shape, layout="contiguous", with_residual=True, x_dtype=torch.float32, residual_dtype=torch.float32,
          out_dtype=None, use_residual_out=True, device="cpu", seed=0):
    x, residual, weight = leaves(shape, layout, with_residual, x_dtype, residual_dtype, device, seed)
    eps = 1e-5

    def run(fn, cast):
        xs = [None if t is None else cast(t).detach().requires_grad_(True) for t in (x, residual, weight)]
        out, res_out = fn(xs[0], xs[1], xs[2], eps, out_dtype, residual_dtype)
        gg = torch.Generator().manual_seed(seed + 1)
        loss = (out.double() * torch.randn(out.shape, generator=gg, dtype=torch.float64).to(out.device)).sum()
        if use_residual_out:
            loss = loss + (res_out.double() * torch.randn(res_out.shape, generator=gg, dtype=torch.float64)
                           .to(out.device)).sum()
        present = [t for t in xs if t is not None]
        grads = iter(torch.autograd.grad(loss, present))
        return [out, res_out] + [next(grads) if t is not None else None for t in xs]

    got = run(add_rms_norm_triton, lambda t: t)
    ref = run(add_rms_norm_ref, lambda t: t.double())
    low = torch.bfloat16 in (x_dtype, residual_dtype, out_dtype)
    tol = 1e-2 if low else 1e-5
    assert got[0].dtype == (out_dtype or x_dtype) and got[1].dtype == residual_dtype
    assert_all_match(["out", "residual_out", "dx", "dresidual", "dweight"], got, ref, tol)


@cpu_only
@pytest.mark.parametrize("shape", [(2, 7, 50), (3, 5, 64), (1, 1, 33), (9, 20)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_add_norm_matches_reference(shape, layout):
    # d = 50 and 33 are not powers of two (masked columns); 2 * 7 = 14 rows cross the row blocks.
    check(shape, layout, seed=sum(shape))


@cpu_only
@pytest.mark.parametrize("use_residual_out", [True, False])
def test_residual_out_gradient_is_optional(use_residual_out):
    # The final norm discards residual_out: its gradient arrives as None.
    check((2, 9, 40), use_residual_out=use_residual_out, seed=3)


@cpu_only
def test_first_block_has_no_residual():
    check((2, 9, 40), with_residual=False, seed=4)
    check((2, 9, 40), with_residual=False, x_dtype=torch.bfloat16, residual_dtype=torch.float32, seed=5)


@cpu_only
def test_mixed_precision_as_in_autocast():
    # bf16 mixer output + fp32 residual -> fp32 residual stream, bf16 normalised output for the next in_proj.
    check((2, 11, 48), "transposed", x_dtype=torch.bfloat16, residual_dtype=torch.float32,
          out_dtype=torch.bfloat16, seed=6)


@cpu_only
def test_no_residual_in_its_own_dtype_returns_the_input_as_residual():
    x, _, weight = leaves((2, 5, 16), "contiguous", False, torch.float32, None, "cpu", 7)
    out, res = add_rms_norm_triton(x, None, weight, 1e-5)
    assert res is x
    ref, _ = add_rms_norm_ref(x.double(), None, weight.double(), 1e-5)
    assert rel(out, ref) <= 1e-6


@cpu_only
def test_backward_spreads_rows_over_programs(monkeypatch):
    # More rows than programs * BLOCK_M: each program loops over several row blocks and dweight adds partials.
    monkeypatch.setattr(triton_norm, "_programs", lambda device: 3)
    check((4, 33, 24), seed=8)


@cpu_only
def test_bad_shapes_raise():
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="residual shape"):
        add_rms_norm_triton(x, torch.randn(2, 3, 4), torch.ones(8), 1e-5)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_add_norm_on_gpu(layout):
    check((8, 2048, 768), layout, x_dtype=torch.bfloat16, residual_dtype=torch.float32,
          out_dtype=torch.bfloat16, device="cuda", seed=9)
    check((2, 1000, 50), layout, device="cuda", seed=10)
