"""Context parallelism: one sequence split across the ranks of a process group, with the gradients of one pass.

Rank r of R holds the contiguous positions ``[lo_r, hi_r)`` of the time axis (:func:`segment_bounds`). Layer l on
rank r needs that layer's state just before ``lo_r``, which rank r - 1 computes: the layer's *carry*, conv inputs
(batch, d_inner, d_conv - 1) and SSM state (batch, d_inner, d_state) fp32. So, per training step:

    forward   for l = 0 .. L-1:  receive carry_l from r - 1, run layer l on the segment, send carry_l to r + 1
    head      final norm, loss of the segment's own targets, its backward
    backward  for l = L-1 .. 0:  receive dL/d(carry_l out) from r + 1, back-propagate layer l,
                                 send dL/d(carry_l in) to r - 1
    then      sum the parameter gradients (and the loss and target counts) over the group, divide by the targets

Each layer's carry depends only on the same layer of the rank before, so the ranks run as a wavefront: rank r
starts layer l as soon as rank r - 1 has finished layer l. Honest cost: a forward takes about L + R - 1 segment-layer
times where one device takes R x L on the whole sequence (and the same for the backward, top down), so the speed-up
is at most L R / (L + R - 1) (1.78x for 8 layers on 2 ranks), not R; the first layers of the last rank wait in the
forward and the last layers of the first rank wait in the backward. The messages are tiny (L x batch x d_inner x
(d_conv - 1 + d_state) x 4 bytes per boundary and direction: 39 KB per layer at d_model 256), so the cost is the
waiting, not the bandwidth. Memory per rank is one segment's activations. Nothing is approximated: no rank starts
from a guessed state (that would be exact only for the linear scan, not through the stack of nonlinear layers).

The schedule is explicit (like :mod:`mamba_bio_audio.training.segmented`): layers are cut at detached boundaries
and back-propagated one at a time, so sends and receives happen in one fixed order on every rank (NCCL matches
point-to-point messages by order). ``model.gradient_checkpointing = True`` keeps only each layer's inputs in the
forward and recomputes the layer just before its backward. Autocast active around the call is used for the forward
and the recomputations (the backward runs outside it, as autocast asks). Not for fp16: the gradients are of the
summed (not yet averaged) loss until the final all-reduce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor], tuple[torch.Tensor | None, int]]


def segment_bounds(seqlen: int, world: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` per rank covering ``range(seqlen)``; the first ``seqlen % world`` ranks get one more."""
    if world < 1 or seqlen < world:
        raise ValueError(f"cannot split {seqlen} positions over {world} ranks (each needs at least one)")
    size, extra = divmod(seqlen, world)
    bounds, lo = [], 0
    for r in range(world):
        hi = lo + size + (r < extra)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def local_lm_ids(input_ids: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's slice of a next-token batch: input_ids (batch, seqlen + 1) -> (batch, n_r + 1).

    Rank r gets the tokens at positions ``lo_r .. hi_r`` inclusive: its inputs ``[lo_r, hi_r)`` plus one more,
    the target of its last position. Target ownership: a target belongs to the rank holding the position that
    predicts it, so the first input token of rank r + 1 is also the last target of rank r (and no other rank's);
    the union of the ranks' targets is ``input_ids[:, 1:]``, each target once.
    """
    lo, hi = segment_bounds(input_ids.shape[1] - 1, world)[rank]
    return input_ids[:, lo: hi + 1]


# ---- carries on the wire --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """Shape and dtype of one carry tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def _amp_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def carry_specs(backbone: nn.Module, batch: int, amp: tuple[bool, torch.dtype]) -> list[tuple[_Spec, _Spec]]:
    """Per layer: (conv carry (batch, d_inner, d_conv - 1) in the activation dtype, SSM state (batch, d_inner,
    d_state) in fp32, fp64 for fp64 models). Every rank computes these from the model, so no shapes are sent."""
    specs = []
    for layer in backbone.layers:
        mixer = layer.mixer
        weight_dtype = mixer.in_proj.weight.dtype
        double = weight_dtype == torch.float64
        act = amp[1] if amp[0] and not double else weight_dtype  # autocast leaves fp64 alone
        state = torch.float64 if double else torch.float32
        specs.append((_Spec((batch, mixer.d_inner, mixer.d_conv - 1), act),
                      _Spec((batch, mixer.d_inner, mixer.d_state), state)))
    return specs


def _wire_dtype(specs) -> torch.dtype:
    """One buffer per message, in the widest dtype of its parts (bf16 -> fp32 -> bf16 is exact)."""
    return torch.float64 if any(s.dtype == torch.float64 for s in specs) else torch.float32


class _Neighbours:
    """Point-to-point messages with the ranks before and after this one in ``group``; sends are asynchronous
    and kept (buffer and handle) until :meth:`wait_sends`."""

    def __init__(self, group, device: torch.device):
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.world = dist.get_world_size(self.group)
        self.device = device
        self.prev = dist.get_global_rank(self.group, self.rank - 1) if self.rank > 0 else None
        self.next = dist.get_global_rank(self.group, self.rank + 1) if self.rank < self.world - 1 else None
        self._sends: list = []

    def send(self, tensors, specs, dst: int) -> None:
        for t, s in zip(tensors, specs):
            if tuple(t.shape) != s.shape or t.dtype != s.dtype:
                raise RuntimeError(f"context parallel: carry is {tuple(t.shape)} {t.dtype}, expected {s.shape} "
                                   f"{s.dtype} (the carry dtype rule in carry_specs is out of date)")
        wire = _wire_dtype(specs)
        buf = torch.cat([t.detach().reshape(-1).to(wire) for t in tensors])
        self._sends.append((dist.isend(buf, dst, group=self.group), buf))

    def recv(self, specs, src: int) -> list[torch.Tensor]:
        numels = [torch.Size(s.shape).numel() for s in specs]
        buf = torch.empty(sum(numels), dtype=_wire_dtype(specs), device=self.device)
        dist.irecv(buf, src, group=self.group).wait()  # NCCL: the current stream waits, not the CPU
        parts = buf.split(numels)
        return [p.view(s.shape).to(s.dtype) for p, s in zip(parts, specs)]

    def wait_sends(self) -> None:
        for work, _ in self._sends:
            work.wait()
        self._sends.clear()


# ---- the step ---------------------------------------------------------------------------------------------------


@dataclass
class _LayerRecord:
    """What the backward of one layer needs: its inputs (leaves), its carry in (leaves), and, unless
    checkpointing, its outputs with their graph."""

    hidden: torch.Tensor
    residual: torch.Tensor | None
    carry_in: tuple | None
    outputs: tuple | None


def _leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().requires_grad_(t.is_floating_point())


def _grad_or_zeros(t: torch.Tensor) -> torch.Tensor:
    return t.grad if t.grad is not None else torch.zeros_like(t)


def context_parallel_backward(backbone: nn.Module, input_ids: torch.Tensor, loss_fn: LossFn, group=None,
                              sync_gradients: bool = True) -> float:
    """Forward and backward of this rank's segment of one sequence, gradients exact as one pass over the whole.

    Args:
        backbone: a ``MambaBackbone`` (identical weights on every rank of ``group``).
        input_ids: (batch, n_r) this rank's segment of the time axis (rank order = time order).
        loss_fn: final hidden states (batch, n_r, d_model) -> (summed loss of this rank's targets, or None if it has
            none; number of those targets). The loss is averaged over the targets of all ranks.
        group: the process group (None: the default one); every rank must call this with the same batch size.
        sync_gradients: all-reduce the gradients (summed over ranks, divided by all targets) into ``p.grad``,
            accumulating like ``loss.backward()``. With False, ``p.grad`` holds this rank's unnormalised part.
    Returns:
        The mean loss over all ranks' targets (the same float on every rank).
    """
    device = input_ids.device
    amp = _amp_state(device.type)
    fwd_ctx = lambda: torch.autocast(device.type, dtype=amp[1], enabled=amp[0])
    peers = _Neighbours(group, device)
    specs = carry_specs(backbone, input_ids.shape[0], amp)
    checkpointing = _checkpointing(backbone)
    params = [p for p in backbone.parameters() if p.requires_grad] + [
        p for p in _extra_params(loss_fn) if p.requires_grad]
    params = list({id(p): p for p in params}.values())
    earlier = {id(p): p.grad for p in params}  # keep gradients accumulated before this call out of the sum
    for p in params:
        p.grad = None

    # forward: a relay over ranks, layer by layer (wavefront)
    embedded = backbone.embedding(input_ids)
    hidden, residual = _leaf(embedded), None
    records: list[_LayerRecord] = []
    for layer, spec in zip(backbone.layers, specs):
        carry_in = None
        if peers.prev is not None:
            carry_in = tuple(_leaf(t) for t in peers.recv(spec, peers.prev))
        with torch.set_grad_enabled(not checkpointing):
            outputs = layer.forward_segment(hidden, residual, carry_in)
        if peers.next is not None:
            peers.send(outputs[2], spec, peers.next)
        records.append(_LayerRecord(hidden, residual, carry_in, None if checkpointing else outputs))
        hidden, residual = _leaf(outputs[0]), _leaf(outputs[1])

    # head: as MambaBackbone.forward_segment, then this rank's loss
    final = backbone._final_norm(hidden, residual)
    loss_sum, count = loss_fn(final)
    with torch.autocast(device.type, enabled=False):
        if loss_sum is not None:
            loss_sum.backward()
        grad_hidden, grad_residual = _grad_or_zeros(hidden), _grad_or_zeros(residual)

        # backward: a relay in the other direction, top layer first
        for layer, spec, rec in reversed(list(zip(backbone.layers, specs, records))):
            if rec.outputs is None:  # checkpointing: recompute the layer (before waiting for the next rank)
                with torch.enable_grad(), fwd_ctx():
                    rec.outputs = layer.forward_segment(rec.hidden, rec.residual, rec.carry_in)
            out_hidden, out_residual, carry_out = rec.outputs
            roots, grads = [out_hidden, out_residual], [grad_hidden, grad_residual]
            if peers.next is not None:
                roots += list(carry_out)
                grads += peers.recv(spec, peers.next)
            pairs = [(t, g) for t, g in zip(roots, grads) if t.requires_grad]
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
            if peers.prev is not None:
                peers.send([_grad_or_zeros(t) for t in rec.carry_in], spec, peers.prev)
            grad_hidden = _grad_or_zeros(rec.hidden)
            grad_residual = None if rec.residual is None else _grad_or_zeros(rec.residual)
            rec.outputs = rec.hidden = rec.residual = rec.carry_in = None  # free this layer's activations
        embedded.backward(grad_hidden)
    peers.wait_sends()

    # all ranks: the loss and target counts, then the gradients, summed
    local = loss_sum.detach().double() if loss_sum is not None else torch.zeros((), dtype=torch.float64,
                                                                                  device=device)
    totals = torch.stack([local, torch.tensor(float(count), dtype=torch.float64, device=device)])
    dist.all_reduce(totals, group=peers.group)
    total_loss, total_count = totals.tolist()
    if total_count <= 0:
        raise ValueError("context parallel: no rank has any target")
    if sync_gradients:
        allreduce_gradients(params, peers.group, scale=1.0 / total_count)
    for p in params:
        if earlier[id(p)] is not None:
            p.grad = earlier[id(p)] if p.grad is None else p.grad + earlier[id(p)]
    return total_loss / total_count


def _checkpointing(backbone: nn.Module) -> bool:
    """Recompute each layer in the backward: the backbone's ``checkpoint_level`` > 0 (``gradient_checkpointing``).
    Any level recomputes whole blocks on the rank's segment here (level 1's memory, not level 2's)."""
    level = getattr(backbone, "checkpoint_level", None)
    return level > 0 if level is not None else bool(getattr(backbone, "gradient_checkpointing", False))


def _extra_params(loss_fn) -> list[nn.Parameter]:
    """Parameters of the head that ``loss_fn`` uses (``loss_fn.parameters``, if it names them)."""
    return list(getattr(loss_fn, "parameters", lambda: [])())


def allreduce_gradients(params, group=None, scale: float = 1.0) -> None:
    """Sum ``p.grad`` over ``group`` (one all-reduce per dtype, missing gradients count as zeros), times ``scale``."""
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.dtype, []).append(p)
    for group_params in by_dtype.values():
        flat = torch.cat([_grad_or_zeros(p).reshape(-1) for p in group_params])
        dist.all_reduce(flat, group=group)
        if scale != 1.0:
            flat.mul_(scale)
        for p, g in zip(group_params, flat.split([p.numel() for p in group_params])):
            p.grad = g.view_as(p).clone()


class _LMLoss:
    """Next-token cross-entropy (summed) of a MambaLM's head on this rank's targets."""

    def __init__(self, model: nn.Module, targets: torch.Tensor):
        self.model = model
        self.targets = targets

    def parameters(self):
        return self.model.lm_head.parameters()

    def __call__(self, hidden: torch.Tensor):
        vocab = self.model.config.vocab_size
        logits = self.model.lm_head(hidden)[..., :vocab]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        loss = F.cross_entropy(logits.reshape(-1, vocab), self.targets.reshape(-1), reduction="sum")
        return loss, self.targets.numel()


def context_parallel_lm_backward(model: nn.Module, local_ids: torch.Tensor, group=None,
                                 sync_gradients: bool = True) -> float:
    """Next-token loss of one sequence split over ``group``, back-propagated; returns the mean loss (nats/token).

    ``model``: a MambaLM, the same weights on every rank. ``local_ids``: (batch, n_r + 1) from
    :func:`local_lm_ids` (this rank's inputs plus the next token). Accumulates into ``p.grad`` the gradient of the
    whole sequence's mean loss, identical on every rank (so each rank's optimizer takes the same step).
    """
    inputs, targets = local_ids[:, :-1], local_ids[:, 1:]
    return context_parallel_backward(model.backbone, inputs, _LMLoss(model, targets), group, sync_gradients)
