"""Triton decode step vs the float64 oracle, and against the fused scan run one token at a time."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402

from mamba_bio_audio.kernels.selective_scan.naive import selective_scan_naive  # noqa: E402
from mamba_bio_audio.kernels.selective_state_update.reference import selective_state_update_ref  # noqa: E402
from mamba_bio_audio.kernels.selective_state_update.triton_step import selective_state_update_triton  # noqa: E402

from helpers import kernel_devices, poison_empty, rel  # noqa: E402

DEVICES = kernel_devices(pytest)


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    poison_empty(monkeypatch)


def inputs(batch, dim, d_state, groups, device, seed, dtype=torch.float32, state_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    bc_shape = (batch, d_state) if groups is None else (batch, groups, d_state)
    t = dict(state=randn(batch, dim, d_state), x=randn(batch, dim), dt=randn(batch, dim) * 0.5,
             A=-torch.rand(dim, d_state, generator=g, dtype=torch.float64) - 0.1, B=randn(*bc_shape),
             C=randn(*bc_shape), D=randn(dim), z=randn(batch, dim), dt_bias=randn(dim) * 0.5)
    return {k: v.to(device, state_dtype if k == "state" else dtype) for k, v in t.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape,groups,optional",
    [((2, 12, 4), None, True), ((3, 10, 16), None, False), ((2, 12, 5), 3, True), ((1, 40, 1), 4, True),
     ((2, 7, 64), None, True)],
)
@pytest.mark.parametrize("softplus", [True, False])
def test_step_matches_oracle(device, shape, groups, optional, softplus):
    t = inputs(*shape, groups, device, seed=sum(shape))
    if not optional:
        t.update(D=None, z=None, dt_bias=None)
    ref_state = t["state"].double()
    ref = selective_state_update_ref(ref_state, *(t[k].double() if t[k] is not None else None
                                                    for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")), softplus)
    state = t.pop("state")
    out = selective_state_update_triton(state, **t, dt_softplus=softplus, block_d=8)
    assert out.dtype == torch.float32 and out.shape == shape[:2]
    assert rel(out, ref) <= 1e-5
    assert rel(state, ref_state) <= 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_state_and_strided_state(device):
    t = inputs(2, 12, 8, None, device, seed=3, dtype=torch.bfloat16, state_dtype=torch.float16)
    # A strided state: (batch, d_state, dim) storage viewed as (batch, dim, d_state).
    state = t.pop("state").transpose(1, 2).contiguous().transpose(1, 2)
    ref_state = state.clone()
    ref = selective_state_update_ref(ref_state, **t, dt_softplus=True)
    out = selective_state_update_triton(state, **t, dt_softplus=True)
    assert out.dtype == torch.bfloat16
    assert rel(out, ref) <= 1e-2
    assert rel(state, ref_state) <= 1e-2


@pytest.mark.parametrize("device", DEVICES)
def test_steps_reproduce_the_scan(device):
    """Feeding the tokens one by one through the step gives the scan's outputs and last state."""
    batch, dim, seqlen, d_state = 2, 6, 5, 4
    g = torch.Generator().manual_seed(9)
    u, delta, z = (torch.randn(batch, dim, seqlen, generator=g).to(device) for _ in range(3))
    B, C = (torch.randn(batch, d_state, seqlen, generator=g).to(device) for _ in range(2))
    A = -torch.rand(dim, d_state, generator=g).to(device)
    D, bias = torch.randn(dim, generator=g).to(device), torch.randn(dim, generator=g).to(device)
    ref, last = selective_scan_naive(u, delta, A, B, C, D, z, bias, True, True)
    state = torch.zeros(batch, dim, d_state, device=device)
    outs = [selective_state_update_triton(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t],
                                          bias, True) for t in range(seqlen)]
    assert rel(torch.stack(outs, -1), ref) <= 1e-5
    assert rel(state, last) <= 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("groups", [None, 2])
def test_row_strided_inputs_and_fused_dt_projection(device, groups):
    """x and z as halves of one (batch, 2 dim) product, B and C (and the low-rank dt) as slices of one x_proj
    output, as the mixer's decode step passes them; dt projected inside the kernel."""
    batch, dim, d_state, rank = 3, 20, 6, 5
    g = torch.Generator().manual_seed(11)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    xz, x_dbl = randn(batch, 2 * dim), randn(batch, rank + 2 * d_state * (groups or 1))
    W = randn(dim, rank) * 0.4
    A = -torch.rand(dim, d_state, generator=g, dtype=torch.float64) - 0.1
    D, bias, state = randn(dim), randn(dim) * 0.3, randn(batch, dim, d_state)

    def operands(dtype, dev):
        """x, z, low-rank dt, B, C as views of xz and x_dbl (converted first, so the views stay strided)."""
        xz_, x_dbl_ = xz.to(dev, dtype), x_dbl.to(dev, dtype)
        n_bc = d_state * (groups or 1)
        low, B, C = torch.split(x_dbl_, [rank, n_bc, n_bc], dim=-1)
        if groups:
            B, C = B.unflatten(-1, (groups, d_state)), C.unflatten(-1, (groups, d_state))
        return xz_[:, :dim], xz_[:, dim:], low, B, C

    x, z, low, B, C = operands(torch.float64, "cpu")
    ref_state = state.clone()
    ref = selective_state_update_ref(ref_state, x, low @ W.T, A, B, C, D, z, bias, True)
    x, z, low, B, C = operands(torch.float32, device)
    assert not x.is_contiguous() and not B.is_contiguous()
    state32 = state.to(device, torch.float32)
    out = selective_state_update_triton(state32, x, low, A.to(device, torch.float32), B, C,
                                        D.to(device, torch.float32), z, bias.to(device, torch.float32), True,
                                        dt_proj_weight=W.to(device, torch.float32), block_d=8)
    assert out.is_contiguous() and out.shape == (batch, dim)
    assert rel(out, ref) <= 1e-5
    assert rel(state32, ref_state) <= 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_dt_projection_of_the_wrong_shape_raises(device):
    t = inputs(2, 12, 4, None, device, seed=5)
    with pytest.raises(ValueError, match="dt_proj_weight"):
        selective_state_update_triton(t.pop("state"), **t, dt_proj_weight=torch.zeros(12, 3, device=device))
