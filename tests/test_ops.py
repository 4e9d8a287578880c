"""ops dispatch, the decode step and the causal conv against their references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mamba_bio_audio import ops
from mamba_bio_audio.kernels.selective_scan.naive import selective_scan_naive

from conftest import rel_err
from helpers import scan_inputs


def test_backend_validation_and_env_override(monkeypatch):
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.resolve_backend("fast", "scan", x)
    monkeypatch.setenv(ops.ENV_VAR, "reference")
    assert ops.resolve_backend("auto", "scan", x)[0] == "reference"
    monkeypatch.setenv(ops.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=ops.ENV_VAR):
        ops.resolve_backend("auto", "scan", x)
    monkeypatch.delenv(ops.ENV_VAR)
    assert ops.resolve_backend("auto", "scan", x)[0] == "reference"  # CPU tensors


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(ops, "_load", lambda module, name: (lambda *a, **k: None))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        ops.resolve_backend("triton", "scan", torch.zeros(1))


def test_cuda_backend_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ops, "_load", lambda module, name: None)
    with pytest.raises(RuntimeError, match="not available"):
        ops.resolve_backend("cuda", "scan", torch.zeros(1))


def test_selective_scan_fn_reference_matches_oracle():
    kw = scan_inputs(2, 5, 23, 4, seed=4)
    ref, ref_last = selective_scan_naive(**kw, delta_softplus=True, return_last_state=True)
    out, last = ops.selective_scan_fn(**{k: (v.float() if torch.is_tensor(v) else v) for k, v in kw.items()},
                                      delta_softplus=True, return_last_state=True, backend="reference")
    assert rel_err(out, ref) < 1e-5 and rel_err(last, ref_last) < 1e-5


@pytest.mark.parametrize("grouped", [False, True])
def test_state_update_steps_equal_the_scan(grouped):
    """Running selective_state_update step by step reproduces the parallel scan and its last state."""
    batch, dim, seqlen, d_state = 2, 6, 13, 4
    kw = scan_inputs(batch, dim, seqlen, d_state, bc="grouped" if grouped else "input", groups=3, seed=8)
    ref, ref_last = selective_scan_naive(**kw, delta_softplus=True, return_last_state=True)
    state = kw["initial_state"].clone()
    outs = []
    for t in range(seqlen):
        outs.append(ops.selective_state_update(
            state, kw["u"][:, :, t], kw["delta"][:, :, t], kw["A"], kw["B"][..., t], kw["C"][..., t], kw["D"],
            z=kw["z"][:, :, t], dt_bias=kw["delta_bias"], dt_softplus=True))
    assert rel_err(torch.stack(outs, -1), ref) < 1e-10
    assert rel_err(state, ref_last) < 1e-10


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv_matches_torch_conv1d(width, activation):
    g = torch.Generator().manual_seed(width)
    x = torch.randn(2, 5, 19, generator=g)
    w = torch.randn(5, width, generator=g)
    b = torch.randn(5, generator=g)
    expected = F.conv1d(x, w[:, None, :], b, padding=width - 1, groups=5)[..., :19]
    if activation:
        expected = F.silu(expected)
    assert rel_err(ops.causal_conv1d_fn(x, w, b, activation=activation), expected) < 1e-6


def test_causal_conv_states_and_update():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 15, generator=g, dtype=torch.float64)
    w = torch.randn(4, 4, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    full, final = ops.causal_conv1d_fn(x, w, b, "silu", return_final_state=True)
    first, mid = ops.causal_conv1d_fn(x[..., :6], w, b, "silu", return_final_state=True)
    second = ops.causal_conv1d_fn(x[..., 6:], w, b, "silu", initial_state=mid)
    assert rel_err(torch.cat([first, second], -1), full) < 1e-12
    state = torch.zeros(2, 4, 4, dtype=torch.float64)
    steps = torch.stack([ops.causal_conv1d_update(x[..., t], state, w, b, "silu") for t in range(15)], -1)
    assert rel_err(steps, full) < 1e-12
    assert torch.equal(state[..., 1:], final)
    with pytest.raises(ValueError, match="activation"):
        ops.causal_conv1d_fn(x, w, b, "relu")


@pytest.mark.parametrize("name,fn", [("MBA_FUSED_DECODE_MAX_BATCH", ops.fused_decode_max_batch),
                                     ("MBA_FUSED_DT_PROJ_MAX_BATCH", ops.fused_dt_proj_max_batch),
                                     ("MBA_FUSED_BLOCK_DECODE_MAX_BATCH", ops.fused_block_decode_max_batch),
                                     ("MBA_FUSED_OUT_PROJ_MAX_BATCH", ops.fused_out_proj_max_batch)])
def test_decode_thresholds_read_the_environment(name, fn, monkeypatch):
    monkeypatch.setenv(name, "5")
    assert fn() == 5
    monkeypatch.setenv(name, "eight")
    with pytest.raises(ValueError, match=f"{name} must be an integer"):
        fn()


def test_fused_out_proj_stays_off_under_deterministic_algorithms(monkeypatch):
    # its fp32 row sums are atomic adds in a run-dependent order
    monkeypatch.setenv("MBA_FUSED_OUT_PROJ_MAX_BATCH", "2")
    hidden = torch.zeros(2, 8)
    assert ops.fused_out_proj_ok(hidden) and not ops.fused_out_proj_ok(torch.zeros(3, 8))
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert not ops.fused_out_proj_ok(hidden)
    finally:
        torch.use_deterministic_algorithms(previous)
