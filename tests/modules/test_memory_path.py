"""Checkpoint levels (MambaConfig.checkpoint_level): the same gradients as the plain path, and the activation bytes
they keep, counted exactly on CPU (benchmarks/memory.py LiveBytes)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mamba_bio_audio import MambaConfig, MambaLM
from mamba_bio_audio.benchmarks.memory import activation_bytes
from mamba_bio_audio.errors import UserError
from mamba_bio_audio.modules.recompute import MIN_SEGMENT, segment_length

from conftest import rel_err
from helpers import assert_one_line_error, run_cli

D_MODEL, N_LAYER, D_STATE, D_CONV = 16, 3, 4, 4
D_INNER = 2 * D_MODEL


def make_model(level: int, segment: int | None = 16, **kw) -> MambaLM:
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=D_MODEL, n_layer=N_LAYER, vocab_size=7, d_state=D_STATE, d_conv=D_CONV, **kw)
    model = MambaLM(cfg).double().train()
    model.checkpoint_level = level
    model.backbone.recompute_segment = segment
    return model


def gradients(model: MambaLM, ids: torch.Tensor, weights: torch.Tensor):
    """(output, parameter gradients by name, gradient of the input embeddings) of sum(weights * logits)."""
    model.zero_grad(set_to_none=True)
    embeds = model.backbone.embedding(ids).detach().requires_grad_()
    hidden = model.backbone(None, inputs_embeds=embeds)
    (model.lm_head(hidden)[..., :7] * weights).sum().backward()
    model.zero_grad(set_to_none=True)  # the embedding weight got no gradient above; now the whole model
    logits = model(ids)
    (logits * weights).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, embeds.grad


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("ssm_layer", ["S6", "S4D"])
@pytest.mark.parametrize("level", [1, 2])
def test_checkpoint_levels_give_the_plain_gradients(level, ssm_layer, bidirectional):
    ids = torch.randint(0, 7, (2, 50), generator=torch.Generator().manual_seed(1))
    weights = torch.randn(2, 50, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    kw = {"ssm_layer": ssm_layer, "bidirectional": bidirectional}
    out0, grads0, dx0 = gradients(make_model(0, **kw), ids, weights)
    # segments of 16 steps: 16, 16, 16, 2 (the last shorter than the conv width)
    out, grads, dx = gradients(make_model(level, segment=16, **kw), ids, weights)
    if level == 1 or bidirectional:
        assert torch.equal(out, out0)  # the same operations (bidirectional mixers run level 2 as level 1)
    assert rel_err(out, out0) < 1e-12
    assert rel_err(dx, dx0) < 1e-10
    for name, g in grads0.items():
        assert rel_err(grads[name], g) < 1e-10, name


def test_level_two_uneven_segments_and_segment_longer_than_sequence():
    ids = torch.randint(0, 7, (1, 37), generator=torch.Generator().manual_seed(3))
    weights = torch.randn(1, 37, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    _, grads0, _ = gradients(make_model(0), ids, weights)
    for segment in (1, 5, 36, 64):
        _, grads, _ = gradients(make_model(2, segment=segment), ids, weights)
        for name, g in grads0.items():
            assert rel_err(grads[name], g) < 1e-10, (segment, name)


def row_bytes(batch: int, seqlen: int) -> int:
    """One (batch, seqlen, d_model) float64 tensor: the residual stream at one block boundary."""
    return batch * seqlen * D_MODEL * 8


@pytest.mark.parametrize("seqlen", [64, 256])
def test_kept_bytes_per_level(seqlen):
    batch, segment = 2, 32
    ids = torch.randint(0, 7, (batch, seqlen), generator=torch.Generator().manual_seed(5))
    kept = {level: activation_bytes(make_model(level, segment).backbone, ids) for level in (0, 1, 2)}
    row = row_bytes(batch, seqlen)
    for stats in kept.values():
        assert stats["output"] == row
    # level 1: the stream at the n_layer - 1 inner boundaries (the ids, not the embedding, enter the first unit)
    assert kept[1]["kept"] == (N_LAYER - 1) * row + row
    # level 2: the same, plus the conv inputs (d_conv - 1) and SSM state (d_state) entering each later segment
    carries = N_LAYER * (seqlen // segment - 1) * batch * D_INNER * (D_CONV - 1 + D_STATE) * 8
    assert kept[2]["kept"] == (N_LAYER - 1) * row + row + carries
    # level 0 keeps every block's activations: dozens of rows per block
    assert kept[0]["kept"] > 20 * N_LAYER * row


@pytest.mark.slow  # four float64 passes at lengths up to 512 under the byte counter
def test_level_two_peak_does_not_grow_with_the_recomputed_block():
    """Doubling the length adds to level 2's peak only the stream-sized tensors (boundaries, output, gradients
    of the stream in and out, output gradient): the recomputed block is one segment, whatever the length."""
    batch, segment = 1, 16
    peaks = {}
    for level in (1, 2):
        for seqlen in (128, 512):
            ids = torch.randint(0, 7, (batch, seqlen), generator=torch.Generator().manual_seed(6))
            peaks[level, seqlen] = activation_bytes(make_model(level, segment).backbone, ids)["peak"]
    extra_rows = row_bytes(batch, 512) - row_bytes(batch, 128)
    stream_tensors = N_LAYER + 4  # n - 1 boundaries, output, its gradient, stream gradient in and out, one spare
    extra_carries = N_LAYER * (512 - 128) // segment * batch * D_INNER * (D_CONV - 1 + D_STATE) * 8
    assert peaks[2, 512] - peaks[2, 128] <= stream_tensors * extra_rows + extra_carries
    assert peaks[1, 512] - peaks[1, 128] > 3 * stream_tensors * extra_rows  # level 1 holds a whole block
    assert peaks[2, 512] < peaks[1, 512] / 3


class _MatmulDtypes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.mm.default, torch.ops.aten.bmm.default):
            self.dtypes.add(out.dtype)
        return out


def test_level_two_recomputes_under_the_forward_autocast():
    model = make_model(2, segment=16).float()
    ids = torch.randint(0, 7, (1, 64), generator=torch.Generator().manual_seed(7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids).float().square().mean()
    mode = _MatmulDtypes()
    with mode:
        loss.backward()
    assert mode.dtypes == {torch.bfloat16}
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_gradient_checkpointing_switch_and_config_field():
    model = make_model(0)
    assert model.gradient_checkpointing is False
    model.gradient_checkpointing = True
    assert model.checkpoint_level == 2 and model.gradient_checkpointing
    model.checkpoint_level = 1
    model.gradient_checkpointing = True  # keeps a level already chosen
    assert model.checkpoint_level == 1
    model.gradient_checkpointing = False
    assert model.checkpoint_level == 0
    with pytest.raises(ValueError, match="checkpoint_level"):
        model.checkpoint_level = 3
    cfg = MambaConfig(d_model=8, n_layer=1, checkpoint_level=2)
    assert MambaConfig.from_json(cfg.to_json()).checkpoint_level == 2
    assert MambaLM(cfg).checkpoint_level == 2
    with pytest.raises(UserError, match="checkpoint_level"):
        MambaConfig(checkpoint_level=5)


def test_level_two_leaves_eval_and_recurrent_inference_alone():
    model = make_model(2, segment=4)
    ids = torch.randint(0, 7, (2, 12), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        trained_mode = model(ids)
        model.eval()
        plain = model(ids)
        states = model.allocate_inference_cache(2, dtype=torch.float64)
        steps = torch.stack([model.step(ids[:, t], states) for t in range(12)], 1)
    assert torch.equal(trained_mode, plain)  # no autograd: the plain path
    assert rel_err(steps, plain) < 1e-10


def test_segment_length_targets_a_fixed_number_of_elements():
    assert segment_length(1, 512) == 1 << 17
    assert segment_length(8, 1536) == 4096
    assert segment_length(64, 4096) == MIN_SEGMENT
    assert segment_length(1, 512, tokens=100) == 100


def test_bench_memory_measures_each_level(tmp_path, capsys):
    args = ["bench", "memory", "--lengths", "64", "--segment", "16", "--d-model", "8", "--n-layer", "2",
            "--steps", "1", "--device", "cpu", "--out", tmp_path]
    code, out, err = run_cli([*args, "--checkpoint-level", "0,2"], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "bench_memory.json").read_text())["rows"]
    assert [(r["seqlen"], r["checkpoint_level"], r["segment"]) for r in rows] == [(64, 0, 16), (64, 2, 16)]
    assert "2 (per block, time segments)" in out
    code, _, err = run_cli([*args, "--checkpoint-level", "3"], capsys)
    assert_one_line_error(code, err, "--checkpoint-level")


def _cuda_step(level: int, seqlen: int, segment: int | None, d_model: int, autocast: bool):
    """Parameter gradients and peak bytes of one forward + backward of a 2-layer LM on CUDA (Triton path)."""
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=d_model, n_layer=2, vocab_size=16, d_state=16)).cuda().train()
    model.checkpoint_level = level
    model.backbone.recompute_segment = segment
    ids = torch.randint(0, 16, (1, seqlen), device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = model(ids).float().square().mean()
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return {n: p.grad.float().clone() for n, p in model.named_parameters()}, peak


@pytest.mark.gpu
def test_gpu_level_two_matches_level_zero_and_holds_less():
    plain, _ = _cuda_step(0, 4096, None, 64, autocast=False)
    segmented, _ = _cuda_step(2, 4096, 512, 64, autocast=False)  # 8 segments, fp32
    for name, g in plain.items():
        assert rel_err(segmented[name], g) < 1e-4, name
    _, peak1 = _cuda_step(1, 1 << 18, None, 256, autocast=True)
    _, peak2 = _cuda_step(2, 1 << 18, 1 << 15, 256, autocast=True)
    assert peak2 < 0.6 * peak1, (peak1 / 2**30, peak2 / 2**30)
