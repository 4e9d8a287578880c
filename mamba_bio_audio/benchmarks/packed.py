"""Packed vs padded training batches on a realistic length distribution (``mba bench packed``).

The sequences: ``n`` lengths drawn log-uniformly from ``[min_length, max_length]`` (seeded; Genomic
Benchmarks-like 200 to 5,000 by default), random tokens. Three ways to batch them, each given the same token
budget per step (``tokens_per_step``, so ``tokens_per_step // max_length`` sequences or rows per step):

- ``padded to max``: random order, every sequence padded to ``max_length`` (fixed shapes, the naive pipeline);
- ``padded, length buckets``: the classifier's training batches (:func:`~mamba_bio_audio.data_prep.dna.buckets.
  bucket_batches`: similar lengths together), padded to each batch's longest;
- ``packed``: rows of ``max_length`` tokens filled first-fit decreasing (:func:`~mamba_bio_audio.data_prep.dna.
  packing.pack_lengths`, pools of shuffled sequences as in training), told apart by ``seq_idx``.

:func:`run_mode` times forward + backward of one MambaClassifier over every batch of a mode (after one untimed pass
over the same batches, so compilation and autotuning are not counted) and reports useful (non-pad) tokens per
second and the peak memory. :func:`scan_seq_idx` times the selective scan alone with and without ``seq_idx`` at
the scan bench's shapes (boundaries from the same length distribution).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mamba_bio_audio import MambaClassifier, MambaConfig, ops
from mamba_bio_audio.data_prep.dna.buckets import bucket_batches
from mamba_bio_audio.data_prep.dna.packing import pack_lengths

MODES = ("padded to max", "padded, length buckets", "packed")
VOCAB = 12


def sample_lengths(n: int, min_length: int, max_length: int, seed: int = 0) -> np.ndarray:
    """``n`` integer lengths, log-uniform in ``[min_length, max_length]``."""
    rng = np.random.default_rng(seed)
    return np.exp(rng.uniform(np.log(min_length), np.log(max_length + 1), n)).astype(np.int64).clip(
        min_length, max_length)


def plan_batches(lengths: np.ndarray, mode: str, per_step: int, seed: int = 0,
                 pool: int = 4096) -> tuple[list[list[list[int]]], int | None]:
    """The batches of ``mode``: each a list of rows, each row a list of sequence indices (one unless packed); and
    the fixed row width (``padded to max``) or None (each batch as wide as its fullest row)."""
    rng = np.random.default_rng(seed)
    if mode == "padded to max":
        order = rng.permutation(lengths.size).tolist()
        return [[[i] for i in order[s: s + per_step]] for s in range(0, len(order), per_step)], int(lengths.max())
    if mode == "padded, length buckets":  # every sequence once (bucket_batches repeats some to fill its last batch)
        seen: set[int] = set()
        batches = [[[i] for i in b.tolist() if not (i in seen or seen.add(i))]
                   for b in bucket_batches(lengths, per_step, seed)]
        return [b for b in batches if b], None
    if mode == "packed":
        order = rng.permutation(lengths.size)
        rows = []
        for start in range(0, order.size, pool):
            chunk = order[start: start + pool]
            rows.extend([int(chunk[j]) for j in row] for row in pack_lengths(lengths[chunk], int(lengths.max())))
        rows = [rows[r] for r in rng.permutation(len(rows))]
        return [rows[s: s + per_step] for s in range(0, len(rows), per_step)], None
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def make_batch(rows: list[list[int]], lengths: np.ndarray, width: int | None, packed: bool,
               device: str) -> dict[str, torch.Tensor]:
    """Random tokens of the rows' sequences: ``input_ids``, ``attention_mask``, ``labels`` (one per sequence), and
    ``seq_idx`` when ``packed``; right padding to ``width`` (None: the fullest row)."""
    fill = [int(lengths[row].sum()) for row in rows]
    width = width or max(fill)
    g = torch.Generator().manual_seed(len(rows) * 7919 + width)
    ids = torch.randint(0, VOCAB, (len(rows), width), generator=g)
    mask = torch.arange(width) < torch.tensor(fill).unsqueeze(1)
    batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
             "labels": torch.randint(0, 2, (sum(len(r) for r in rows),), generator=g).to(device)}
    if packed:
        seq_idx = torch.zeros(len(rows), width, dtype=torch.int32)
        for b, row in enumerate(rows):
            seq_idx[b, : fill[b]] = torch.repeat_interleave(torch.arange(len(row), dtype=torch.int32),
                                                            torch.from_numpy(lengths[row]))
            seq_idx[b, fill[b]:] = len(row)
        batch["seq_idx"] = seq_idx.to(device)
    return batch


def build_model(d_model: int, n_layer: int, device: str, backend: str) -> MambaClassifier:
    from mamba_bio_audio.modules.mixer import set_backend

    torch.manual_seed(0)
    model = MambaClassifier(MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=VOCAB), num_classes=2)
    return set_backend(model, backend).to(device).train()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_mode(model: MambaClassifier, lengths: np.ndarray, mode: str, tokens_per_step: int, device: str,
             seed: int = 0) -> dict:
    """Forward + backward over every batch of ``mode``: seconds, useful and computed tokens, peak memory."""
    per_step = max(1, tokens_per_step // int(lengths.max()))
    plan, width = plan_batches(lengths, mode, per_step, seed)
    packed = mode == "packed"
    batches = [make_batch(rows, lengths, width, packed, device) for rows in plan]
    cuda = device.startswith("cuda")

    def step(batch):
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            if packed:
                logits = model(batch["input_ids"], batch["attention_mask"], seq_idx=batch["seq_idx"])
            else:
                logits = model(batch["input_ids"], batch["attention_mask"])
        F.cross_entropy(logits.float(), batch["labels"]).backward()

    row = {"mode": mode, "batches": len(batches), "per_step": per_step,
           "sequences": int(sum(len(r) for rows in plan for r in rows)),
           "useful_tokens": int(sum(b["attention_mask"].sum() for b in batches)),
           "computed_tokens": int(sum(b["input_ids"].numel() for b in batches))}
    try:
        for batch in batches:  # untimed: compilation, autotuning, allocator growth
            step(batch)
        model.zero_grad(set_to_none=True)
        _sync(device)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for batch in batches:
            step(batch)
        _sync(device)
        row["seconds"] = time.perf_counter() - started
        row["useful_tokens_per_second"] = row["useful_tokens"] / row["seconds"]
        row["computed_tokens_per_second"] = row["computed_tokens"] / row["seconds"]
        if cuda:
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    finally:
        model.zero_grad(set_to_none=True)
        del batches
        if cuda:
            torch.cuda.empty_cache()
    row["useful_fraction"] = row["useful_tokens"] / row["computed_tokens"]
    return row


def row_seq_idx(batch: int, seqlen: int, min_length: int, max_length: int, seed: int = 0) -> torch.Tensor:
    """(batch, seqlen) int32: each row cut into consecutive sequences of log-uniform lengths (the last one cut short
    at the row's end)."""
    rng = np.random.default_rng(seed)
    out = np.empty((batch, seqlen), dtype=np.int32)
    for b in range(batch):
        lengths = sample_lengths(seqlen // min_length + 1, min_length, max_length, int(rng.integers(2**31)))
        ends = np.cumsum(lengths)
        out[b] = np.searchsorted(ends, np.arange(seqlen), side="right")
    return torch.from_numpy(out)


def scan_seq_idx(shape: tuple[int, int, int], backend: str, device: str, min_length: int, max_length: int,
                 dtype: str = "bf16", d_state: int = 16) -> dict:
    """Forward and forward+backward ms of the selective scan at ``shape`` (batch, dim, seqlen) without and with
    ``seq_idx`` (sequences of the bench's length distribution), as :mod:`~mamba_bio_audio.benchmarks.scan` times
    them (inputs, softplus, z present)."""
    from mamba_bio_audio.benchmarks.scan import DTYPES, _timer, make_inputs

    batch, dim, seqlen = shape
    timer = _timer(device)
    row: dict = {"batch": batch, "dim": dim, "seqlen": seqlen, "backend": backend}
    try:
        x = make_inputs(batch, dim, seqlen, d_state, DTYPES[dtype], device, requires_grad=True)
        seq_idx = row_seq_idx(batch, seqlen, min_length, max_length).to(device)
        row["sequences_per_row"] = float((seq_idx[:, -1].float() + 1).mean())
        grad = torch.randn_like(x.u)
        for name, idx in (("", None), ("_seq_idx", seq_idx)):
            def forward(idx=idx):
                return ops.selective_scan_fn(x.u, x.delta, x.A, x.B, x.C, x.D, x.z, x.delta_bias,
                                             delta_softplus=True, backend=backend, seq_idx=idx)

            with torch.no_grad():
                row[f"fwd_ms{name}"] = timer(forward)
            row[f"fwd_bwd_ms{name}"] = timer(lambda forward=forward: torch.autograd.grad(forward(), x.leaves(),
                                                                                          grad))
        row["fwd_ratio"] = row["fwd_ms_seq_idx"] / row["fwd_ms"]
        row["fwd_bwd_ratio"] = row["fwd_bwd_ms_seq_idx"] / row["fwd_bwd_ms"]
    except Exception as e:  # noqa: BLE001 - one failing shape must not hide the others' numbers
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    finally:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return row


def run_packed_bench(*, sequences: int, min_length: int, max_length: int, tokens_per_step: int, d_model: int,
                     n_layer: int, backend: str, scan_shapes: list[tuple[int, int, int]], scan_backend: str,
                     device: str, seed: int = 0, progress: Callable[[str], None] = print) -> dict:
    """Every mode (:func:`run_mode`) on the same lengths, then the scan with and without ``seq_idx``."""
    lengths = sample_lengths(sequences, min_length, max_length, seed)
    model = build_model(d_model, n_layer, device, backend)
    rows = []
    for mode in MODES:
        progress(f"packed bench: {mode}, {sequences} sequences of {min_length}-{max_length} tokens")
        rows.append(run_mode(model, lengths, mode, tokens_per_step, device, seed))
        r = rows[-1]
        progress("  " + (r["error"] if "error" in r else
                         f"{r['useful_tokens_per_second']:,.0f} useful tokens/s, {r['useful_fraction']:.0%} useful"))
    base = rows[0].get("useful_tokens_per_second")
    for r in rows:
        if base and "useful_tokens_per_second" in r:
            r["speedup_vs_padded_to_max"] = r["useful_tokens_per_second"] / base
    scan_rows = []
    for shape in scan_shapes:
        progress(f"packed bench: scan at {shape}, {scan_backend}, without and with seq_idx")
        scan_rows.append(scan_seq_idx(shape, scan_backend, device, min_length, max_length))
    return {"lengths": {"n": sequences, "min": min_length, "max": max_length, "distribution": "log-uniform",
                        "mean": float(lengths.mean()), "median": float(np.median(lengths)), "seed": seed},
            "tokens_per_step": tokens_per_step, "d_model": d_model, "n_layer": n_layer, "backend": backend,
            "parameters": sum(p.numel() for p in model.parameters()), "device": device, "rows": rows,
            "scan": scan_rows}


def packed_markdown(result: dict, env: dict) -> str:
    """The report of :func:`run_packed_bench`: the setting, one row per mode, one row per scan shape."""
    from mamba_bio_audio.benchmarks.report import commit_text, markdown_table

    lens = result["lengths"]
    modes = markdown_table(
        ["mode", "batches", "per step", "useful tokens", "useful share", "useful tokens/s", "vs padded to max",
         "peak GiB", "note"],
        [[r["mode"], r["batches"], r["per_step"], r["useful_tokens"], r["useful_fraction"],
          r.get("useful_tokens_per_second"), r.get("speedup_vs_padded_to_max"), r.get("peak_gib"),
          r.get("error", "")] for r in result["rows"]])
    scan = markdown_table(
        ["(batch, dim, seqlen)", "sequences/row", "fwd ms", "fwd ms seq_idx", "ratio", "fwd+bwd ms",
         "fwd+bwd ms seq_idx", "ratio", "note"],
        [[f"({r['batch']}, {r['dim']}, {r['seqlen']})", r.get("sequences_per_row"), r.get("fwd_ms"),
          r.get("fwd_ms_seq_idx"), r.get("fwd_ratio"), r.get("fwd_bwd_ms"), r.get("fwd_bwd_ms_seq_idx"),
          r.get("fwd_bwd_ratio"), r.get("error", "")] for r in result["scan"]])
    scan_backend = result["scan"][0]["backend"] if result["scan"] else "—"
    return (f"# Packed vs padded batches\n\n{env['device']}, torch {env['torch']}, triton {env['triton']}, "
            f"{env['date']}{commit_text(env)}. {lens['n']} sequences, lengths log-uniform in [{lens['min']}, {lens['max']}] (mean "
            f"{lens['mean']:.0f}, seed {lens['seed']}); MambaClassifier d_model {result['d_model']} x "
            f"{result['n_layer']} ({result['parameters']:,} parameters, backend {result['backend']}), forward + "
            f"backward{', bf16 autocast' if result['device'].startswith('cuda') else ''}; "
            f"{result['tokens_per_step']:,} tokens per step: {result['rows'][0]['per_step']} sequences (padded) or "
            f"rows of {lens['max']:,} tokens (packed) per step; timed over every batch after one untimed pass. "
            f"Useful tokens: not padding."
            f"\n\n{modes}\n\n## Selective scan with and without seq_idx ({scan_backend})\n\n{scan}")
