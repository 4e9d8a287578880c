"""The whole model through the Triton kernels (interpreted on CPU) equals the reference backend: logits and every
gradient, batch > 1, so the channel-major layout between the projections, the conv and the scan is exercised."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from mamba_bio_audio import MambaConfig, MambaLM  # noqa: E402
from mamba_bio_audio.modules.mixer import set_backend  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def logits_and_grads(model, ids, backend, loss_fn, autocast=False):
    """[logits (fp32), every parameter's gradient] after one forward and backward through ``backend``."""
    set_backend(model, backend)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(ids)
    loss_fn(logits).backward()
    return [logits.detach().float()] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.skipif(not INTERPRETING, reason="CPU tensors need TRITON_INTERPRET=1")
@pytest.mark.parametrize("checkpoint_level", [0, pytest.param(2, marks=pytest.mark.slow)])  # 2: ~30 s
def test_triton_model_matches_reference(checkpoint_level):
    torch.manual_seed(0)
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=11, d_state=4, checkpoint_level=checkpoint_level)
    model = MambaLM(config).train()
    model.backbone.recompute_segment = 8  # level 2: three time segments, states carried through the kernels
    ids = torch.randint(0, 11, (3, 21))
    results = [logits_and_grads(model, ids, backend, lambda logits: (
        logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum()) for backend in ("reference", "triton")]
    for ref, tri in zip(*results):
        assert torch.allclose(tri, ref, rtol=1e-4, atol=1e-5), (tri - ref).abs().max()


@pytest.mark.skipif(not INTERPRETING, reason="CPU tensors need TRITON_INTERPRET=1")
def test_triton_model_under_bf16_autocast_matches_reference():
    # The fused add + RMSNorm hands the next in_proj a bf16 output and keeps the residual stream in fp32.
    torch.manual_seed(1)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=11, d_state=4)).train()
    ids = torch.randint(0, 11, (2, 13))
    results = [logits_and_grads(model, ids, backend, lambda logits: logits.float().pow(2).mean(), autocast=True)
               for backend in ("reference", "triton")]
    for ref, tri in zip(*results):
        err = ((tri - ref).norm() / ref.norm().clamp_min(1e-12)).item()
        assert err < 3e-2, err


@pytest.mark.skipif(not INTERPRETING, reason="CPU tensors need TRITON_INTERPRET=1")
@pytest.mark.parametrize("fused_max_batch,block,dt_proj,out_proj", [
    ("8", "3", "8", "3"), ("8", "3", "8", "2"), ("8", "2", "8", "3"), ("0", "3", "8", "3"), ("0", "3", "2", "3")],
    ids=["block-fused-out-proj", "block-fused", "inner-fused", "unfused", "unfused-dt-proj-apart"])
def test_triton_decode_steps_match_reference(fused_max_batch, block, dt_proj, out_proj, monkeypatch, request):
    # Batch 3: x, z, B, C and the low-rank dt reach the kernels as strided views; dt_proj runs inside the step;
    # inner-fused: conv + x_proj + dt_proj + state update in two kernels; block-fused: also the residual add,
    # the norm and in_proj (kernels/mamba_decode/triton_decode.py), and out_proj inside the second kernel unless
    # the batch is above MBA_FUSED_OUT_PROJ_MAX_BATCH.
    from mamba_bio_audio import ops
    from mamba_bio_audio.kernels.mamba_decode import triton_decode

    monkeypatch.setenv("MBA_FUSED_DECODE_MAX_BATCH", fused_max_batch)
    monkeypatch.setenv("MBA_FUSED_BLOCK_DECODE_MAX_BATCH", block)  # batch 3: "2" keeps in_proj apart
    monkeypatch.setenv("MBA_FUSED_DT_PROJ_MAX_BATCH", dt_proj)  # "2": dt_proj as its own product
    monkeypatch.setenv("MBA_FUSED_OUT_PROJ_MAX_BATCH", out_proj)  # "2": out_proj by cuBLAS after the block step
    calls = []
    block_fn = triton_decode.mamba_block_decode_triton
    monkeypatch.setattr(triton_decode, "mamba_block_decode_triton",
                        lambda *a, **k: calls.append(k.get("out_scratch") is not None) or block_fn(*a, **k))
    ops._load.cache_clear()  # ops looks the kernel up (cached) by module and name
    request.addfinalizer(ops._load.cache_clear)  # after monkeypatch's undo: no counting wrapper stays cached
    torch.manual_seed(2)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=11, d_state=4)).eval()
    ids = torch.randint(0, 11, (3, 6))
    with torch.no_grad():  # the oracle: the parallel forward of the reference backend (no step code shared)
        expected = set_backend(model, "reference").backbone(ids).transpose(0, 1)
        set_backend(model, "triton")
        states = model.backbone.allocate_states(3)
        got = torch.stack([model.backbone.step(ids[:, t], states) for t in range(ids.shape[1])])
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), (got - expected).abs().max()
    assert len(calls) == (2 * 6 if (fused_max_batch, block) == ("8", "3") else 0)  # 2 layers x 6 steps
    assert all(calls) == (out_proj == "3")
    if calls and all(calls):  # every layer's out_proj scratch was left at zero for the next step
        assert all(torch.count_nonzero(s["out_proj_scratch"]["acc"]) == 0 for s in states)


@pytest.mark.skipif(not INTERPRETING, reason="CPU tensors need TRITON_INTERPRET=1")
def test_fused_norm_can_be_turned_off(monkeypatch):
    from mamba_bio_audio.kernels.rms_norm import triton_norm

    def refuse(*args):
        raise AssertionError("the fused norm ran with MBA_FUSED_NORM=0")

    monkeypatch.setattr(triton_norm._AddRMSNormFn, "apply", refuse)
    monkeypatch.setenv("MBA_FUSED_NORM", "0")
    model = set_backend(MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=11, d_state=4)), "triton")
    model(torch.randint(0, 11, (1, 5)))
