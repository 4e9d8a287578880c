"""The captured training step (training/graphed_step.py): on CPU the eager step equals a plain step and every
refusal is one line; ``-m gpu``: the captured step gives the eager step's losses, grads and parameters, trains
nothing while being built, and reads each call's new batch."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F

from mamba_bio_audio import MambaConfig, MambaLM
from mamba_bio_audio.benchmarks.train import lm_loss
from mamba_bio_audio.errors import UserError
from mamba_bio_audio.modules.mixer import set_backend
from mamba_bio_audio.training.graphed_step import (
    CapturedStep,
    EagerStep,
    check_capturable,
    make_step,
    train_step,
)

from conftest import rel_err

VOCAB = 32
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
cuda_triton = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING,
                                 reason="needs CUDA and TRITON_INTERPRET=0")
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_lm(device: str = "cpu", tie: bool = True, d_model: int = 16) -> MambaLM:
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=d_model, n_layer=2, vocab_size=VOCAB, tie_embeddings=tie)).to(device)
    return set_backend(model, "triton" if device == "cuda" else "auto").train()


def batches(n: int, batch: int, seqlen: int, device: str = "cpu", lo: int = 0, hi: int = VOCAB, seed: int = 1):
    """n (inputs, targets) pairs of (batch, seqlen) token ids in [lo, hi), targets the inputs shifted by one."""
    gen = torch.Generator(device).manual_seed(seed)
    ids = torch.randint(lo, hi, (n, batch, seqlen + 1), device=device, generator=gen)
    return [(ids[k, :, :-1], ids[k, :, 1:]) for k in range(n)]


def one_line_error(excinfo, fragment: str) -> None:
    message = str(excinfo.value)
    assert fragment in message and "\n" not in message, message


# ---- CPU ---------------------------------------------------------------------------------------------------------

def test_eager_step_equals_plain_step():
    """make_step(cuda_graph=False) with the benchmark's loss is the step ``mba bench train`` always timed: forward,
    fp32 cross-entropy, grads set to None, backward, AdamW; the same losses and parameters, bit for bit."""
    plain = tiny_lm()
    stepped = copy.deepcopy(plain)
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    opt_stepped = torch.optim.AdamW(stepped.parameters(), lr=1e-2)
    step = make_step(stepped, opt_stepped, lm_loss("mamba", stepped, VOCAB, cuda=False), *batches(1, 2, 12)[0],
                     cuda_graph=False)
    assert isinstance(step, EagerStep) and not step.cuda_graph and step.setup_seconds == 0
    for inputs, targets in batches(3, 2, 12):
        logits = plain(inputs)
        loss = F.cross_entropy(logits[..., :VOCAB].float().flatten(0, 1), targets.flatten())
        opt_plain.zero_grad(set_to_none=True)
        loss.backward()
        opt_plain.step()
        got = step(inputs, targets)
        assert not got.requires_grad and torch.equal(got, loss.detach())
    for (name, p), q in zip(plain.named_parameters(), stepped.parameters()):
        assert torch.equal(p, q), name
        assert torch.equal(p.grad, q.grad), name


def test_train_step_returns_the_loss_and_drops_old_grads():
    model = tiny_lm()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e6)  # a stale gradient that accumulation would keep
    inputs, targets = batches(1, 1, 8)[0]
    loss = train_step(opt, lm_loss("mamba", model, VOCAB, cuda=False), inputs, targets)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert max(p.grad.abs().max().item() for p in model.parameters()) < 1e5


def test_captured_step_needs_a_cuda_device():
    model = tiny_lm()
    opt = torch.optim.AdamW(model.parameters(), capturable=True)
    inputs, targets = batches(1, 1, 8)[0]
    with pytest.raises(UserError) as excinfo:
        CapturedStep(model, opt, lm_loss("mamba", model, VOCAB, cuda=False), inputs, targets)
    one_line_error(excinfo, "CUDA graphs need a CUDA device; got cpu")
    with pytest.raises(UserError, match="need a CUDA device"):
        make_step(model, opt, lm_loss("mamba", model, VOCAB, cuda=False), inputs, targets, cuda_graph=True)


@pytest.mark.parametrize("change, fragment", [
    ("sgd", "must be torch.optim.Adam or AdamW, got SGD"),
    ("not_capturable", "AdamW(..., capturable=True)"),
    ("checkpointing", "checkpoint_level 2 (activation recomputation) is not captured"),
    ("list_inputs", "inputs must be a tensor, got list"),
])
def test_check_capturable_refusals(change, fragment):
    model = tiny_lm()
    opt = (torch.optim.SGD(model.parameters(), lr=0.1) if change == "sgd"
           else torch.optim.AdamW(model.parameters(), capturable=change != "not_capturable"))
    if change == "checkpointing":
        model.checkpoint_level = 2
    inputs, targets = batches(1, 1, 8)[0]
    if change == "list_inputs":
        inputs = inputs.tolist()
    with pytest.raises(UserError) as excinfo:
        check_capturable(model, opt, inputs, targets)
    one_line_error(excinfo, fragment)


def test_captured_step_needs_a_warmup_step():
    model = tiny_lm()
    opt = torch.optim.AdamW(model.parameters(), capturable=True)
    with pytest.raises(ValueError, match="warmup must be at least 1"):
        CapturedStep(model, opt, lm_loss("mamba", model, VOCAB, cuda=False), *batches(1, 1, 8)[0], warmup=0)


# ---- GPU ---------------------------------------------------------------------------------------------------------

def gpu_loss(model):
    """bf16 autocast without the weight cache (as a captured region needs), fp32 cross-entropy."""
    return lm_loss("mamba", model, VOCAB, cuda=True, autocast_cache=False)


def eager_and_graphed(tie: bool = True):
    """Two identical tiny LMs on CUDA (Triton kernels), each with its own AdamW(capturable=True)."""
    eager = tiny_lm("cuda", tie=tie, d_model=64)
    graphed = copy.deepcopy(eager)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, capturable=True) for m in (eager, graphed)]
    return eager, graphed, *opts


@pytest.mark.gpu
@cuda_triton
def test_gpu_captured_step_matches_eager_over_five_steps():
    eager, graphed, opt_eager, opt_graphed = eager_and_graphed()
    start = {k: v.detach().clone() for k, v in eager.state_dict().items()}
    data = batches(5, 2, 128, "cuda")
    step = CapturedStep(graphed, opt_graphed, gpu_loss(graphed), *data[0])
    assert step.cuda_graph and step.setup_seconds > 0
    # building it trained nothing: the warm-up steps were undone
    for k, v in graphed.state_dict().items():
        assert torch.equal(v, start[k]), k
    assert opt_graphed.state and all(float(s["step"]) == 0 and not s["exp_avg"].any()
                                     for s in opt_graphed.state.values())
    eager_losses, graphed_losses = [], []
    for inputs, targets in data:
        eager_losses.append(train_step(opt_eager, gpu_loss(eager), inputs, targets))
        loss = step(inputs, targets)
        assert loss is step.loss  # the static loss, overwritten by each replay
        graphed_losses.append(loss.clone())
    torch.testing.assert_close(torch.stack(graphed_losses), torch.stack(eager_losses), rtol=5e-3, atol=0)
    assert len(set(torch.stack(eager_losses).tolist())) == 5  # five different steps
    assert all(float(s["step"]) == 5 for s in opt_graphed.state.values())
    moved = diff = 0.0
    for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
        moved += (p.detach().double() - start[name].double()).pow(2).sum().item()
        diff += (p.detach().double() - q.detach().double()).pow(2).sum().item()
        assert rel_err(q.grad, p.grad) < 0.05, name
    assert moved > 0 and diff ** 0.5 < 0.02 * moved ** 0.5, (diff, moved)


@pytest.mark.gpu
@cuda_triton
def test_gpu_replay_reads_the_new_batch():
    """Captured on batch A (tokens in the lower half of the vocabulary), replayed on A then on B (upper half):
    after B, the (untied) embedding's gradient is zero on A's tokens and not on B's, and every gradient is the
    eager step's on B."""
    eager, graphed, opt_eager, opt_graphed = eager_and_graphed(tie=False)
    half = VOCAB // 2
    a = batches(1, 2, 128, "cuda", 0, half)[0]
    b = batches(1, 2, 128, "cuda", half, VOCAB, seed=2)[0]
    step = CapturedStep(graphed, opt_graphed, gpu_loss(graphed), *a)
    for inputs, targets in (a, b):
        train_step(opt_eager, gpu_loss(eager), inputs, targets)
        step(inputs, targets)
    grad = graphed.backbone.embedding.weight.grad
    assert not grad[:half].any()
    assert grad[half:].abs().sum(1).gt(0).all()
    for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
        assert rel_err(q.grad, p.grad) < 0.05, name


@pytest.mark.gpu
@cuda_triton
def test_gpu_captured_step_refuses_other_shapes():
    _, graphed, _, opt = eager_and_graphed()
    inputs, targets = batches(1, 2, 64, "cuda")[0]
    step = CapturedStep(graphed, opt, gpu_loss(graphed), inputs, targets, warmup=1)
    with pytest.raises(UserError) as excinfo:
        step(inputs[:, :32], targets[:, :32])
    one_line_error(excinfo, "captured for inputs (2, 64) int64 on cuda:0; got (2, 32)")
    with pytest.raises(UserError, match="captured for targets"):
        step(inputs, targets.int())
    assert torch.isfinite(step(inputs, targets))
