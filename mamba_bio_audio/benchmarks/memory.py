"""Whole-model training memory and step time at long sequence lengths (``mba bench memory``).

:func:`measure_step`: one optimizer step (forward, backward, AdamW) of a MambaClassifier on one sequence per
length, bf16 autocast on the GPU, at a given ``checkpoint_level`` (0 none, 1 per-block recompute, 2 per-block
recompute in time segments: modules/recompute.py); peak memory from ``torch.cuda.max_memory_allocated``
(parameters, optimizer state and activations together).

:class:`LiveBytes` / :func:`activation_bytes`: the same question answered exactly on any device by counting
the storages that autograd ops allocate (a TorchDispatchMode), so CPU tests can check what each level keeps.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mamba_bio_audio import MambaClassifier, MambaConfig

#: MambaConfig.checkpoint_level -> what it recomputes (report wording).
LEVEL_NAMES = {0: "none", 1: "per block", 2: "per block, time segments"}


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensor storages created by ops run while active and still alive.

    ``live()``: bytes alive now; ``peak``: the most alive after any op. Storages made before entering (parameters,
    inputs) are not counted; views share their base's storage and count once. Exact and deterministic, but slow
    (every op scans the tracked storages): for small models.
    """

    def __init__(self):
        super().__init__()
        self._storages: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def live(self) -> int:
        self._storages = {k: v for k, v in self._storages.items() if not v[0].expired()}
        return sum(nbytes for _, nbytes in self._storages.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage()._cdata for t in _tensors((args, kwargs))}
        allocated = False
        for t in _tensors(out):
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs:  # a view of an input, or written in place: no new memory
                continue
            known = self._storages.get(key)
            if known is None or known[0].expired():
                self._storages[key] = (StorageWeakRef(storage), storage.nbytes())
                allocated = True
        if allocated:  # the peak can only rise when something is allocated
            self.peak = max(self.peak, self.live())
        return out


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor) and t.device.type != "meta"]


def activation_bytes(model: torch.nn.Module, input_ids: torch.Tensor, loss_fn=None) -> dict:
    """Bytes a forward keeps for the backward, and the peak over forward + backward, for ``model`` as it is
    (train mode and its ``checkpoint_level`` included).

    Returns {"kept": bytes alive after the forward (the output included), "output": the output's bytes,
    "peak": most bytes alive during forward + backward, "after": bytes alive after the backward (parameter
    gradients)}. ``loss_fn(output) -> scalar`` defaults to the sum of squares.
    """
    loss_fn = loss_fn or (lambda out: out.float().square().sum())
    mode = LiveBytes()
    with mode:
        out = model(input_ids)
        kept = mode.live()
        output = out.untyped_storage().nbytes()
        loss_fn(out).backward()
        del out
        after = mode.live()
    return {"kept": kept, "output": output, "peak": mode.peak, "after": after}


def _step(model, opt, ids: torch.Tensor, labels: torch.Tensor, cuda: bool) -> None:
    """One optimizer step: forward (bf16 autocast on CUDA), cross-entropy, backward, AdamW."""
    with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
        loss = F.cross_entropy(model(ids).float(), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure_step(d_model: int, n_layer: int, seqlen: int, checkpoint_level: int, device: str,
                 steps: int = 3, batch: int = 1, vocab: int = 12, segment: int | None = None,
                 warmup: int = 1) -> dict:
    """Median seconds per step and peak GiB for a classifier with ``d_model`` x ``n_layer`` at ``seqlen``
    (``segment``: steps per recomputed segment at level 2, None = automatic). ``warmup`` untimed steps first
    (Triton compilation and autotuning); the peak is taken over the timed steps (its counter reset after the
    warm-up), the warm-up's in ``setup_peak_gib``."""
    torch.manual_seed(0)
    model = MambaClassifier(MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=vocab), num_classes=5)
    model = model.to(device)
    model.checkpoint_level = checkpoint_level
    model.backbone.recompute_segment = segment
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, seqlen), device=device)
    labels = torch.randint(0, 5, (batch,), device=device)
    cuda = device.startswith("cuda")
    row = {"d_model": d_model, "n_layer": n_layer, "seqlen": seqlen, "batch": batch,
           "checkpoint_level": checkpoint_level, "segment": segment, "warmup": warmup,
           "parameters": sum(p.numel() for p in model.parameters())}

    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            _step(model, opt, ids, labels, cuda)
        if cuda:
            torch.cuda.synchronize()
            row["setup_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            _step(model, opt, ids, labels, cuda)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        row["seconds_per_step"] = sorted(times)[len(times) // 2]
        row["tokens_per_second"] = batch * seqlen / row["seconds_per_step"]
        if cuda:
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    finally:
        del model, opt
        if cuda:
            torch.cuda.empty_cache()
    return row


def memory_markdown(rows: list[dict], env: dict, d_model: int, n_layer: int, segment: int | None) -> str:
    """The report of :func:`measure_step` rows (``env``: ``report.environment()``): the setting and one table row
    per length and checkpoint level."""
    from mamba_bio_audio.benchmarks.report import commit_text, markdown_table

    table = markdown_table(
        ["seqlen", "checkpoint level", "s/step", "tokens/s", "peak GiB", "note"],
        [[r["seqlen"], f"{r['checkpoint_level']} ({LEVEL_NAMES[r['checkpoint_level']]})", r.get("seconds_per_step"),
          r.get("tokens_per_second"), r.get("peak_gib"), r.get("error", "")] for r in rows])
    return (f"# Training memory vs length\n\n{env['device']}, torch {env['torch']}, triton {env['triton']}, "
            f"{env['date']}{commit_text(env)}; MambaClassifier d_model {d_model} x {n_layer} layers ({rows[0]['parameters']:,} "
            f"parameters), batch 1, bf16 autocast, AdamW; {rows[0].get('warmup', 0)} untimed warm-up step(s), then "
            f"peak = torch.cuda.max_memory_allocated over the timed steps; level 2 segments: "
            f"{segment or 'automatic'}.\n\n{table}")
