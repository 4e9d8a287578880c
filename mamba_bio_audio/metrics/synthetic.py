"""Accuracy of a model on the synthetic tasks, and at test lengths far beyond the training length.

Evaluation is the parallel forward under ``torch.inference_mode()``, batched. A sequence longer than
``segment_len`` runs as consecutive segments with the recurrent state carried from one to the next
(``model.forward_segment``: exact, the same states as one pass), so memory grows with batch x segment_len, not
with the test length: 2^20 tokens cost one 2^16-token segment's activations at a time. :func:`evaluate_lengths`
sizes each length's batch from a memory budget, reports instead of running a length for which even one sequence
(or segment) does not fit (on CUDA an out-of-memory error halves the batch), and skips the lengths it reaches
after an optional deadline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from mamba_bio_audio.training.synthetic_task import IGNORE_INDEX, masked_loss_and_counts

SampleFn = Callable[[int], dict]


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batch(sample_fn: SampleFn, indices: range, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack samples ``indices``: input_ids (batch, seqlen) and the answer span's targets (batch, span) on
    ``device``, and ``span`` (positions from the first answer to the end; only those reach the device)."""
    samples = [sample_fn(i) for i in indices]
    targets = torch.stack([s["targets"] for s in samples])
    has_answer = (targets != IGNORE_INDEX).any(0).nonzero()
    span = targets.shape[1] - int(has_answer[0]) if len(has_answer) else 1
    ids = torch.stack([s["input_ids"] for s in samples]).to(device)
    return ids, targets[:, -span:].to(device), span


def answer_logits(model: nn.Module, input_ids: torch.Tensor, span: int, segment_len: int | None = None
                  ) -> torch.Tensor:
    """Logits (batch, span, vocab) of the last ``span`` positions of input_ids (batch, seqlen).

    Sequences longer than ``segment_len`` run segment by segment through ``model.forward_segment`` (MambaLM,
    SSMOnlyLM), carrying the recurrent states: activation memory is one segment's, the logits those of one pass.
    Otherwise (or for a model without ``forward_segment``) one ``model(input_ids, num_last_tokens=span)``.
    """
    seqlen = input_ids.shape[1]
    if not segment_len or seqlen <= segment_len or not hasattr(model, "forward_segment"):
        return model(input_ids, num_last_tokens=span)
    first = seqlen - span
    carries, pieces = None, []
    for lo in range(0, seqlen, segment_len):
        hi = min(lo + segment_len, seqlen)
        logits, carries = model.forward_segment(input_ids[:, lo:hi], carries)
        if hi > first:
            pieces.append(logits[:, max(first - lo, 0):])
    return torch.cat(pieces, dim=1)


@torch.inference_mode()
def evaluate_accuracy(model: nn.Module, sample_fn: SampleFn, n_samples: int, batch_size: int = 32,
                      segment_len: int | None = None) -> dict:
    """Argmax accuracy over the answer positions of samples ``sample_fn(0 .. n_samples - 1)``.

    Args:
        model: input_ids (batch, seqlen) -> logits; called with ``num_last_tokens`` so that only the positions
            from the first answer on get logits (MambaLM and SSMOnlyLM accept it).
        sample_fn: index -> {"input_ids": (seqlen,), "targets": (seqlen,)}, targets -100 where there is no answer.
        segment_len: run sequences longer than this in segments with carried states (see :func:`answer_logits`).
    Returns:
        {"accuracy", "loss" (mean cross-entropy over answers), "answers" (how many were scored)}.
    """
    device = _device_of(model)
    was_training = model.training
    model.eval()
    correct = answers = 0
    loss_sum = 0.0
    try:
        for start in range(0, n_samples, batch_size):
            ids, targets, span = _batch(sample_fn, range(start, min(start + batch_size, n_samples)), device)
            logits = answer_logits(model, ids, span, segment_len)
            loss, right, count = masked_loss_and_counts(logits, targets)
            correct += int(right)
            answers += int(count)
            loss_sum += float(loss) * int(count)
    finally:
        model.train(was_training)
    return {"accuracy": correct / max(answers, 1), "loss": loss_sum / max(answers, 1), "answers": answers}


def forward_bytes_per_token(model: nn.Module) -> int:
    """A conservative estimate of the activation memory of a no-grad fp32 forward, per sequence position.

    One layer's live tensors dominate: about 16 (batch, d_inner, seqlen) fp32 tensors in the mixer (projections,
    Delta, the scan's output, the gate) plus the residual stream and the last logits. Measured on an H100 for
    MambaLM at d_model 64, seqlen 2^16 and 2^20: peaks of about 6 KB per position with the Triton or the reference
    scan, against 10 KB estimated.
    """
    c = model.config
    return 4 * (16 * c.d_inner + 4 * c.d_state + 6 * c.d_model + 2 * c.padded_vocab_size)


CPU_BUDGET_CAP = 4 << 30


def default_memory_budget(device: torch.device) -> int:
    """Bytes one evaluation batch may use: 80% of a GPU's free memory; on a CPU half the available RAM, at most
    CPU_BUDGET_CAP (4 GiB: larger batches gain nothing there and crowd a shared machine)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.8 * free)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return CPU_BUDGET_CAP
    return int(min(0.5 * available, CPU_BUDGET_CAP))


@dataclass
class LengthResult:
    """One test length: ``accuracy`` is None (and ``skipped`` says why) when it was not evaluated."""

    seqlen: int
    accuracy: float | None
    n_samples: int
    batch_size: int
    seconds: float
    skipped: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


#: Default segment of :func:`evaluate_lengths`: longer test sequences run in 2^16-token segments.
DEFAULT_SEGMENT_LEN = 1 << 16


def evaluate_lengths(model: nn.Module, sample_fn: Callable[[int, int], dict], lengths: Iterable[int],
                     n_samples: int, memory_budget: int | None = None, max_batch_size: int = 64,
                     progress: Callable[[str], None] | None = None,
                     segment_len: int | None = DEFAULT_SEGMENT_LEN,
                     deadline: float | None = None) -> list[LengthResult]:
    """Accuracy at each test length, each length on its own fixed samples.

    Args:
        sample_fn: (seqlen, index) -> {"input_ids": (seqlen,), "targets": (seqlen,)}.
        n_samples: samples per length. memory_budget: bytes per batch (default :func:`default_memory_budget`).
        max_batch_size: cap on sequences per forward. progress: called with one line per length.
        segment_len: lengths above this run in segments with carried states (:func:`answer_logits`), so a
            batch's activations are those of ``segment_len`` positions; None: always one pass.
        deadline: a ``time.monotonic()`` value; lengths not started by then are skipped ("time budget").
    Returns:
        one :class:`LengthResult` per length, in order; a length whose single sequence (or segment) would exceed
        the budget (by :func:`forward_bytes_per_token`), that runs out of CUDA memory at batch 1, or that comes
        after the deadline is skipped and says so.
    """
    device = _device_of(model)
    budget = memory_budget if memory_budget is not None else default_memory_budget(device)
    per_token = forward_bytes_per_token(model)
    results = []
    for seqlen in lengths:
        segmented = bool(segment_len) and seqlen > segment_len and hasattr(model, "forward_segment")
        # activations of one pass (or one segment), plus the whole sequence's token ids on the device
        need = per_token * (segment_len if segmented else seqlen) + (8 * seqlen if segmented else 0)
        batch = min(max_batch_size, n_samples, budget // need)
        started = time.perf_counter()
        result = None
        if deadline is not None and time.monotonic() >= deadline:
            result = LengthResult(seqlen, None, n_samples, 0, 0.0, "time budget spent before this length")
        elif batch < 1:
            reason = f"needs ~{need / 2**30:.2f} GiB for one sequence, budget {budget / 2**30:.2f} GiB on {device}"
            result = LengthResult(seqlen, None, n_samples, 0, 0.0, reason)
        while result is None:
            try:
                scores = evaluate_accuracy(model, lambda i, n=seqlen: sample_fn(n, i), n_samples, batch,
                                           segment_len=segment_len if segmented else None)
                result = LengthResult(seqlen, scores["accuracy"], n_samples, batch,
                                      time.perf_counter() - started)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if batch == 1:
                    result = LengthResult(seqlen, None, n_samples, 0, time.perf_counter() - started,
                                          f"out of memory on {device} at batch 1")
                batch = max(1, batch // 2)
        results.append(result)
        if progress is not None:
            state = f"accuracy {result.accuracy:.4f}" if result.skipped is None else f"skipped: {result.skipped}"
            progress(f"test length {seqlen}: {state} ({result.seconds:.1f} s, batch {result.batch_size})")
    return results
