"""Whole-model training memory and step time at long sequence lengths (``mba bench memory``).

One optimizer step (forward, backward, AdamW) of a MambaClassifier or MambaLM on one sequence per length, bf16
autocast on the GPU, with and without per-block activation checkpointing; peak memory from
``torch.cuda.max_memory_allocated`` (parameters, optimizer state and activations together).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from mamba_bio_audio import MambaClassifier, MambaConfig


def measure_step(d_model: int, n_layer: int, seqlen: int, checkpointing: bool, device: str,
                 steps: int = 3, batch: int = 1, vocab: int = 12) -> dict:
    """Median seconds per step and peak GiB for a classifier with ``d_model`` x ``n_layer`` at ``seqlen``."""
    torch.manual_seed(0)
    model = MambaClassifier(MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=vocab), num_classes=5)
    model = model.to(device)
    model.gradient_checkpointing = checkpointing
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, seqlen), device=device)
    labels = torch.randint(0, 5, (batch,), device=device)
    cuda = device.startswith("cuda")
    row = {"d_model": d_model, "n_layer": n_layer, "seqlen": seqlen, "batch": batch, "checkpointing": checkpointing,
           "parameters": sum(p.numel() for p in model.parameters())}
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
                loss = F.cross_entropy(model(ids).float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
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
