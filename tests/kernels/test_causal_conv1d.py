"""Triton causal conv1d (forward, every gradient, final state) and its decode update vs the torch reference."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402

from mamba_bio_audio.kernels.causal_conv1d.reference import (  # noqa: E402
    causal_conv1d_ref,
    causal_conv1d_update_ref,
)
from mamba_bio_audio.kernels.causal_conv1d.triton_conv import (  # noqa: E402
    causal_conv1d_triton,
    causal_conv1d_update_triton,
)

from helpers import assert_all_match, poison_empty, rel  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
cpu_only = pytest.mark.skipif(not INTERPRETING, reason="CPU cases need TRITON_INTERPRET=1")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING, reason="needs CUDA and TRITON_INTERPRET=0")


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    poison_empty(monkeypatch)


def check_conv(batch, dim, seqlen, width, activation, bias, init, dtype, device, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    leaves = [torch.randn(batch, dim, seqlen, generator=g, dtype=torch.float64),
              torch.randn(dim, width, generator=g, dtype=torch.float64) * 0.5,
              torch.randn(dim, generator=g, dtype=torch.float64) if bias else None,
              torch.randn(batch, dim, width - 1, generator=g, dtype=torch.float64) if init else None]
    leaves = [x.to(device, dtype) if x is not None else None for x in leaves]

    def run(fn, cast, **kw):
        xs = [cast(x).detach().requires_grad_(True) if x is not None else None for x in leaves]
        out, final = fn(xs[0], xs[1], xs[2], activation, xs[3], True, **kw)
        gg = torch.Generator().manual_seed(seed + 1)
        loss = (out * torch.randn(out.shape, generator=gg, dtype=torch.float64).to(out)).sum()
        loss = loss + (final * torch.randn(final.shape, generator=gg, dtype=torch.float64).to(final)).sum()
        present = [x for x in xs if x is not None]
        grads = iter(torch.autograd.grad(loss, present))
        return [out, final] + [next(grads) if x is not None else None for x in xs]

    got = run(causal_conv1d_triton, lambda x: x, **kw)
    ref = run(causal_conv1d_ref, lambda x: x.double())
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert_all_match(["out", "final_state", "x", "weight", "bias", "initial_state"], got, ref, tol)


@cpu_only
@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("seqlen", [1, 2, 37])
@pytest.mark.parametrize("activation,bias,init", [("silu", True, True), (None, False, False), ("swish", True, False)])
def test_conv_matches_reference(width, seqlen, activation, bias, init):
    # block_t 16 and block_d 4 so that 37 steps and 6 channels cross block boundaries.
    check_conv(2, 6, seqlen, width, activation, bias, init, torch.float32, "cpu", seed=width * 100 + seqlen,
               block_t=16, block_d=4)


@cpu_only
def test_conv_channel_major_input_matches_contiguous():
    """x as a channel-major view (strides (seqlen, batch * seqlen, 1), a projection's output) and dout in yet
    another layout: out and every gradient as for contiguous x, and out / dx keep x's layout."""
    torch.manual_seed(4)
    batch, dim, seqlen, width = 2, 6, 37, 4
    x = torch.randn(dim, batch, seqlen).permute(1, 0, 2)
    weight, bias, init = torch.randn(dim, width), torch.randn(dim), torch.randn(batch, dim, width - 1)
    g = torch.randn(batch, seqlen, dim).transpose(1, 2)

    def run(x):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, bias, init)]
        out = causal_conv1d_triton(leaves[0], leaves[1], leaves[2], "silu", leaves[3], block_t=16, block_d=4)
        return [out] + list(torch.autograd.grad(out, leaves, g))

    strided, reference = run(x), run(x.contiguous())
    assert strided[0].stride() == x.stride() and strided[1].stride() == x.stride()
    for a, r in zip(strided, reference):
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-6)


@cpu_only
def test_conv_bf16():
    check_conv(2, 5, 20, 4, "silu", True, True, torch.bfloat16, "cpu", seed=1, block_t=16, block_d=4)


@cpu_only
@pytest.mark.parametrize("width,state_len", [(2, 1), (4, 3), (4, 6), (3, 2)])
@pytest.mark.parametrize("seqlen", [None, 1, 3])
def test_update_matches_reference(width, state_len, seqlen):
    g = torch.Generator().manual_seed(width * 10 + state_len)
    x = torch.randn(2, 6, generator=g) if seqlen is None else torch.randn(2, 6, seqlen, generator=g)
    state = torch.randn(2, 6, state_len, generator=g)
    weight, bias = torch.randn(6, width, generator=g), torch.randn(6, generator=g)
    ref_state = state.clone()
    ref = causal_conv1d_update_ref(x, ref_state, weight, bias, "silu")
    out = causal_conv1d_update_triton(x, state, weight, bias, "silu", block_d=4)
    assert out.shape == x.shape
    assert rel(out, ref) <= 1e-5
    torch.testing.assert_close(state, ref_state, rtol=0, atol=0)


@cpu_only
def test_update_strided_state_in_x_dtype():
    """A channel-last state (as causal-conv1d keeps it) in fp32 with bf16 inputs: values pass through bf16."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 8, generator=g).bfloat16()
    state = torch.randn(3, 4, 8, generator=g).transpose(1, 2)  # (batch, dim, state_len), not contiguous
    weight = torch.randn(8, 4, generator=g)
    ref_state = state.clone()
    ref = causal_conv1d_update_ref(x, ref_state, weight, None, None)
    out = causal_conv1d_update_triton(x, state, weight, None, None)
    assert out.dtype == torch.bfloat16
    assert rel(out, ref) <= 1e-2
    # The Triton interpreter rounds fp32 -> bf16 by truncation (the GPU rounds to nearest): allow one bf16 ulp.
    torch.testing.assert_close(state, ref_state, rtol=2 ** -7, atol=0)


@cpu_only
@pytest.mark.parametrize("seqlen", [None, 3])
def test_update_reads_a_row_strided_x_in_place(seqlen):
    """x as the first half of in_proj's (batch, 2 dim) output (a strided view), as the decode step passes it."""
    g = torch.Generator().manual_seed(8)
    xz = torch.randn(3, 14, generator=g) if seqlen is None else torch.randn(3, 14, seqlen, generator=g)
    x = xz[:, :7]
    assert not x.is_contiguous()
    state = torch.randn(3, 7, 3, generator=g)
    weight, bias = torch.randn(7, 4, generator=g), torch.randn(7, generator=g)
    ref_state = state.clone()
    ref = causal_conv1d_update_ref(x.clone(), ref_state, weight, bias, "silu")
    out = causal_conv1d_update_triton(x, state, weight, bias, "silu", block_d=4)
    assert out.shape == x.shape and out.is_contiguous()
    assert rel(out, ref) <= 1e-5
    torch.testing.assert_close(state, ref_state, rtol=0, atol=0)


@cpu_only
def test_update_continues_the_sequence():
    """Prefill with the conv's final state, then decode token by token: same outputs as one long conv."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 5, 12, generator=g)
    weight, bias = torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
    full = causal_conv1d_ref(x, weight, bias, "silu")
    out, state = causal_conv1d_triton(x[..., :7], weight, bias, "silu", return_final_state=True)
    steps = [causal_conv1d_update_triton(x[..., t], state, weight, bias, "silu") for t in range(7, 12)]
    assert rel(torch.cat([out, torch.stack(steps, -1)], -1), full) <= 1e-5


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("width", [2, 4])
def test_gpu_conv(dtype, width):
    check_conv(2, 96, 2048, width, "silu", True, True, dtype, "cuda", seed=7)
