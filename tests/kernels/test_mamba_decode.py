"""The fused decode step of a selective mixer (conv + x_proj + dt_proj + state update, two Triton kernels) vs its
torch reference (the unfused ops' references composed) in float64."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402

from mamba_bio_audio import ops  # noqa: E402
from mamba_bio_audio.kernels.mamba_decode import triton_decode  # noqa: E402
from mamba_bio_audio.kernels.mamba_decode.reference import (  # noqa: E402
    mamba_block_decode_ref,
    mamba_decode_inner_ref,
)
from mamba_bio_audio.kernels.mamba_decode.triton_decode import mamba_decode_inner_triton  # noqa: E402

from helpers import assert_all_match, kernel_devices, poison_empty, rel  # noqa: E402

DEVICES = kernel_devices(pytest)


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    poison_empty(monkeypatch)


def weights(dim, d_state, dt_rank, width, state_len, batch, bias, seed):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    return dict(conv_state=randn(batch, dim, state_len), conv_weight=randn(dim, width, scale=0.5),
                conv_bias=randn(dim) if bias else None, x_proj_weight=randn(dt_rank + 2 * d_state, dim, scale=0.3),
                dt_proj_weight=randn(dim, dt_rank, scale=0.5), dt_bias=randn(dim, scale=0.3) if bias else None,
                A=-torch.rand(dim, d_state, generator=g, dtype=torch.float64) - 0.2, D=randn(dim) if bias else None,
                ssm_state=randn(batch, dim, d_state))


def on_device(w: dict, device, dtype) -> dict:
    """Copies of the weights and states ``w`` on ``device`` in ``dtype``; the SSM state stays fp32 unless dtype is
    fp64 (as the decode kernels keep it). None entries stay None."""
    def placed(k, v):
        return v.to(device, torch.float32 if k == "ssm_state" and dtype != torch.float64 else dtype).clone()
    return {k: None if v is None else placed(k, v) for k, v in w.items()}


def run_steps(fn, w, xzs, dtype, device):
    """Decode len(xzs) tokens from copies of the states; x and z are the halves of each (batch, 2 dim) row."""
    w = on_device(w, device, dtype)
    outs = []
    for xz in xzs:
        xz = xz.to(device, dtype)
        dim = xz.shape[1] // 2
        outs.append(fn(xz[:, :dim], xz[:, dim:], **w))
    return torch.stack(outs), w["conv_state"], w["ssm_state"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim,d_state,dt_rank,width,state_len,batch,bias", [
    (20, 4, 3, 4, 4, 2, True),    # the mixer's conv state holds d_conv steps
    (37, 5, 6, 3, 2, 3, False),   # width - 1 steps, odd sizes, no biases, no D
    (64, 16, 4, 4, 4, 1, True),
])
def test_fused_decode_matches_the_unfused_ops(device, dim, d_state, dt_rank, width, state_len, batch, bias):
    w = weights(dim, d_state, dt_rank, width, state_len, batch, bias, seed=dim)
    g = torch.Generator().manual_seed(dim + 1)
    xzs = [torch.randn(batch, 2 * dim, generator=g, dtype=torch.float64) for _ in range(3)]
    ref = run_steps(mamba_decode_inner_ref, w, xzs,
                    torch.float64, "cpu")
    got = run_steps(lambda x, z, **kw: mamba_decode_inner_triton(x, z, conv_block_d=8, block_d=8, **kw), w, xzs,
                    torch.float32, device)
    assert_all_match(("out", "conv_state", "ssm_state"), got, ref, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_decode_in_bf16(device):
    # bf16 weights and activations, fp32 SSM state (as generation runs); the partial sums round through bf16
    # where the unfused x_proj product's output would.
    w = weights(48, 8, 4, 4, 4, 2, True, seed=5)
    g = torch.Generator().manual_seed(6)
    xzs = [torch.randn(2, 96, generator=g, dtype=torch.float64) for _ in range(2)]
    ref = run_steps(mamba_decode_inner_ref, w, xzs,
                    torch.float64, "cpu")
    got = run_steps(lambda x, z, **kw: mamba_decode_inner_triton(x, z, **kw), w, xzs, torch.bfloat16, device)
    assert got[0].dtype == torch.bfloat16
    assert_all_match(("out", "conv_state", "ssm_state"), got, ref, 3e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_that_do_not_fit_raise(device):
    w = weights(16, 4, 3, 4, 4, 1, True, seed=7)
    w = on_device(w, device, torch.float32)
    x = torch.randn(1, 16, device=device)
    with pytest.raises(ValueError, match="do not fit"):
        mamba_decode_inner_triton(x, x, **{**w, "x_proj_weight": torch.zeros(10, 16, device=device)})
    with pytest.raises(ValueError, match="conv_state"):
        mamba_decode_inner_triton(x, x, **{**w, "conv_state": torch.zeros(1, 16, 2, device=device)})


# ---- the whole block head: residual add + RMSNorm + in_proj, then the fused decode -----------------------------------
def block_weights(d_model, dim, d_state, dt_rank, width, batch, bias, seed):
    g = torch.Generator().manual_seed(seed + 100)
    w = weights(dim, d_state, dt_rank, width, width, batch, bias, seed)
    w.update(norm_weight=1 + 0.2 * torch.randn(d_model, generator=g, dtype=torch.float64),
             in_proj_weight=torch.randn(2 * dim, d_model, generator=g, dtype=torch.float64) * d_model ** -0.5,
             in_proj_bias=torch.randn(2 * dim, generator=g, dtype=torch.float64) * 0.1 if bias else None)
    return w


def run_block_steps(fn, w, tokens, dtype, device, residual_dtype):
    """Decode len(tokens) (hidden, residual) pairs from copies of the states: [y], [residual_out], states."""
    w = on_device(w, device, dtype)
    ys, residuals = [], []
    for hidden, residual in tokens:
        y, r = fn(hidden.to(device, dtype), None if residual is None else residual.to(device, residual_dtype),
                  eps=1e-5, residual_dtype=residual_dtype, **w)
        ys.append(y)
        residuals.append(r)
    return torch.stack(ys), torch.stack(residuals), w["conv_state"], w["ssm_state"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d_model,dim,d_state,dt_rank,batch,bias,first,head_block_d,head_rows", [
    (24, 20, 4, 3, 2, True, False, 8, 1),    # dim not a multiple of the block; a program per row
    (37, 37, 5, 6, 3, False, False, 4, 2),   # odd d_model (masked norm), no biases, no D; a half-empty program
    (16, 32, 16, 2, 1, True, True, 16, 4),   # the first block: no residual yet
    (20, 24, 4, 2, 5, True, False, 8, 8),    # every row in one program
])
def test_block_decode_matches_the_unfused_ops(device, d_model, dim, d_state, dt_rank, batch, bias, first,
                                              head_block_d, head_rows):
    w = block_weights(d_model, dim, d_state, dt_rank, 4, batch, bias, seed=d_model)
    g = torch.Generator().manual_seed(d_model + 7)
    tokens = [(torch.randn(batch, d_model, generator=g, dtype=torch.float64),
               None if first else torch.randn(batch, d_model, generator=g, dtype=torch.float64) * 2)
              for _ in range(3)]
    ref = run_block_steps(mamba_block_decode_ref, w, tokens,
                          torch.float64, "cpu", torch.float64)
    got = run_block_steps(lambda h, r, **kw: triton_decode.mamba_block_decode_triton(
        h, r, head_block_d=head_block_d, head_rows=head_rows, block_d=8, **kw), w, tokens, torch.float32, device,
        torch.float32)
    assert_all_match(("y", "residual", "conv_state", "ssm_state"), got, ref, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_block_decode_in_bf16_with_an_fp32_residual(device):
    # as generation runs: bf16 weights and hidden states, the residual stream in fp32, fp32 SSM state
    w = block_weights(40, 48, 8, 4, 4, 2, True, seed=9)
    g = torch.Generator().manual_seed(10)
    tokens = [(torch.randn(2, 40, generator=g, dtype=torch.float64), torch.randn(2, 40, generator=g,
                                                                                 dtype=torch.float64))
              for _ in range(2)]
    ref = run_block_steps(mamba_block_decode_ref, w, tokens,
                          torch.float64, "cpu", torch.float64)
    got = run_block_steps(lambda h, r, **kw: triton_decode.mamba_block_decode_triton(h, r, **kw), w, tokens,
                          torch.bfloat16, device, torch.float32)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    assert rel(got[1], ref[1]) <= 1e-2  # hidden was rounded to bf16 on the way in
    assert_all_match(("y", "conv_state", "ssm_state"), got[:1] + got[2:], ref[:1] + ref[2:], 4e-2)


# ---- the block's step with out_proj fused into the state-update kernel (atomic fp32 rows) ----------------------------
def run_block_steps_through_out_proj(fn, w, tokens, dtype, device, residual_dtype, out_w, out_b):
    """As run_block_steps, each step also through out_proj (out_w (d_model, dim), out_b): [hidden], [residual], states."""
    out_w = out_w.to(device, dtype)
    out_b = None if out_b is None else out_b.to(device, dtype)
    return run_block_steps(lambda h, r, **kw: fn(h, r, out_proj_weight=out_w, out_proj_bias=out_b, **kw), w, tokens,
                           dtype, device, residual_dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d_model,dim,batch,bias,block_d,first", [
    (24, 20, 2, True, 8, False),     # dim not a multiple of the block: a half-empty last program
    (37, 37, 3, False, 4, False),    # odd d_model; no biases, no D; 10 programs per row
    (160, 24, 1, True, 16, True),    # d_model 160 in a 256-row tile: a masked tail of out_proj rows; first block
    (16, 8, 2, True, 8, False),      # one program per row: it is also the last
])
def test_block_decode_through_out_proj_matches_the_unfused_ops(device, d_model, dim, batch, bias, block_d, first):
    w = block_weights(d_model, dim, 4, 3, 4, batch, bias, seed=d_model + 1)
    g = torch.Generator().manual_seed(d_model + 8)
    out_w = torch.randn(d_model, dim, generator=g, dtype=torch.float64) * dim ** -0.5
    out_b = torch.randn(d_model, generator=g, dtype=torch.float64) if bias else None
    tokens = [(torch.randn(batch, d_model, generator=g, dtype=torch.float64),
               None if first else torch.randn(batch, d_model, generator=g, dtype=torch.float64) * 2)
              for _ in range(3)]
    ref = run_block_steps_through_out_proj(mamba_block_decode_ref, w, tokens, torch.float64, "cpu", torch.float64,
                                           out_w, out_b)
    scratch = ops.out_proj_scratch(batch, d_model, like=torch.empty(0, device=device))
    got = run_block_steps_through_out_proj(lambda h, r, **kw: triton_decode.mamba_block_decode_triton(
        h, r, head_block_d=8, block_d=block_d, out_scratch=scratch, **kw), w, tokens, torch.float32, device,
        torch.float32, out_w, out_b)
    assert got[0].shape == (3, batch, d_model)
    assert_all_match(("hidden", "residual", "conv_state", "ssm_state"), got, ref, 1e-5)
    # three steps ran on one scratch: each left its fp32 rows and counts at zero for the next
    assert torch.count_nonzero(scratch["acc"]) == 0 and torch.count_nonzero(scratch["count"]) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_block_decode_through_out_proj_in_bf16(device):
    # as generation runs: bf16 weights, fp32 residual and SSM state; the row is rounded to bf16 once, at the end
    w = block_weights(40, 48, 8, 4, 4, 2, True, seed=12)
    g = torch.Generator().manual_seed(13)
    out_w = torch.randn(40, 48, generator=g, dtype=torch.float64) * 48 ** -0.5
    tokens = [(torch.randn(2, 40, generator=g, dtype=torch.float64), torch.randn(2, 40, generator=g,
                                                                                 dtype=torch.float64))
              for _ in range(2)]
    ref = run_block_steps_through_out_proj(mamba_block_decode_ref, w, tokens, torch.float64, "cpu", torch.float64,
                                           out_w, None)
    scratch = ops.out_proj_scratch(2, 40, like=torch.empty(0, device=device))
    got = run_block_steps_through_out_proj(lambda h, r, **kw: triton_decode.mamba_block_decode_triton(
        h, r, out_scratch=scratch, **kw), w, tokens, torch.bfloat16, device, torch.float32, out_w, None)
    assert got[0].dtype == torch.bfloat16
    assert_all_match(("hidden", "conv_state", "ssm_state"), got[:1] + got[2:], ref[:1] + ref[2:], 4e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_block_decode_through_out_proj_checks_its_arguments(device):
    w = on_device(block_weights(8, 16, 4, 3, 4, 1, True, seed=14), device, torch.float32)
    h = torch.randn(1, 8, device=device)
    out_w = torch.randn(8, 16, device=device)
    with pytest.raises(ValueError, match="needs out_scratch"):
        triton_decode.mamba_block_decode_triton(h, h, eps=1e-5, out_proj_weight=out_w, **w)
    with pytest.raises(ValueError, match="is not out_proj_scratch"):
        triton_decode.mamba_block_decode_triton(h, h, eps=1e-5, out_proj_weight=out_w, **w,
                                                out_scratch=ops.out_proj_scratch(2, 8, like=h))
    with pytest.raises(ValueError, match="does not fit dim"):
        triton_decode.mamba_block_decode_triton(h, h, eps=1e-5, out_proj_weight=out_w[:, :15], **w,
                                                out_scratch=ops.out_proj_scratch(1, 8, like=h))


@pytest.mark.parametrize("device", DEVICES)
def test_block_decode_shapes_that_do_not_fit_raise(device):
    w = block_weights(8, 16, 4, 3, 4, 1, True, seed=11)
    w = on_device(w, device, torch.float32)
    h = torch.randn(1, 8, device=device)
    with pytest.raises(ValueError, match="do not fit d_model"):
        triton_decode.mamba_block_decode_triton(h, h, eps=1e-5, **{**w, "norm_weight": torch.ones(9, device=device)})


def test_the_reference_is_what_the_ops_reference_backend_runs():
    """ops' unfused decode step on the reference backend composes the same references, bit for bit."""
    w = block_weights(24, 20, 4, 3, 4, 2, True, seed=3)
    g = torch.Generator().manual_seed(4)
    tokens = [(torch.randn(2, 24, generator=g, dtype=torch.float64), torch.randn(2, 24, generator=g,
                                                                                 dtype=torch.float64))
              for _ in range(2)]
    ref = run_block_steps(mamba_block_decode_ref, w, tokens, torch.float64, "cpu", torch.float64)
    via_ops = run_block_steps(lambda h, r, **kw: ops.mamba_block_decode(h, r, backend="reference", **kw), w,
                              tokens, torch.float64, "cpu", torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(ref, via_ops, strict=True))


def test_pdl_only_for_compiled_kernels_on_a_gpu(monkeypatch):
    # the interpreter has no griddepcontrol; on a GPU MBA_DECODE_PDL=0 turns it off (the GPU test below runs it)
    assert not triton_decode.use_pdl(torch.zeros(1))
    if torch.cuda.is_available():
        monkeypatch.setenv("MBA_DECODE_PDL", "0")
        assert not triton_decode.use_pdl(torch.zeros(1, device="cuda"))
        monkeypatch.setenv("MBA_DECODE_PDL", "1")
        compiled = os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
        hopper = torch.cuda.get_device_capability() >= (9, 0) and torch.version.hip is None
        assert triton_decode.use_pdl(torch.zeros(1, device="cuda")) == (compiled and hopper)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                    reason="needs CUDA and TRITON_INTERPRET=0")
@pytest.mark.parametrize("pdl", ["1", "0"])
def test_chained_block_steps_through_out_proj_in_a_cuda_graph(pdl, monkeypatch):
    # as generation replays them: 5 layers' block steps (out_proj inside), each layer's output the next one's
    # input, captured once and replayed for 3 tokens; with PDL (Hopper) each kernel starts while the one before
    # it runs, so a read before its griddepcontrol.wait would show here
    monkeypatch.setenv("MBA_DECODE_PDL", pdl)
    layers, batch, d_model, dim = 5, 2, 64, 96
    w = block_weights(d_model, dim, 8, 4, 4, batch, True, seed=15)
    g = torch.Generator().manual_seed(16)
    out_w = torch.randn(d_model, dim, generator=g, dtype=torch.float64) * dim ** -0.5
    tokens = [torch.randn(batch, d_model, generator=g, dtype=torch.float64) for _ in range(3)]

    def chain(fn, dtype, device, scratches=None):
        """fn over the layers for each token: [final hidden + residual] per token, from fresh state copies."""
        ws = [on_device(w, device, dtype) for _ in range(layers)]
        ow = out_w.to(device, dtype)

        def step(h):
            r = None
            for i in range(layers):
                extra = {"out_scratch": scratches[i]} if scratches is not None else {}
                h, r = fn(h, r, eps=1e-5, residual_dtype=dtype, out_proj_weight=ow, **ws[i], **extra)
            return h + r
        return step

    scratches = [ops.out_proj_scratch(batch, d_model, like=torch.empty(0, device="cuda")) for _ in range(layers)]
    step = chain(triton_decode.mamba_block_decode_triton, torch.float32, "cuda", scratches)
    static = tokens[0].to("cuda", torch.float32).clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compiles outside the capture, and advances the states by tokens[0]
        step(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # records, runs nothing
        out = step(static)
    got = []
    for t in tokens:
        static.copy_(t.to("cuda", torch.float32))
        graph.replay()
        got.append(out.clone())
    torch.cuda.synchronize()
    ref_step = chain(mamba_block_decode_ref, torch.float64, "cpu")
    ref_step(tokens[0])  # the warm-up's step
    for t, a in zip(tokens, got, strict=True):
        assert rel(a, ref_step(t)) < 1e-5
    assert all(torch.count_nonzero(s["acc"]) == 0 and torch.count_nonzero(s["count"]) == 0 for s in scratches)
