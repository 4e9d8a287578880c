"""A/B of MambaConfig.fused_inner on one GPU: training step time and peak memory, "off" vs "triton", one model
after the other (each alone on the GPU, so each peak is its own). Prints a JSON line per shape; argv[1]: the
report's JSON file.

    python dev/fused_inner_ab.py OUT.json [d_model n_layer]   # shapes (8, 2048) and (1, 65536)
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from mamba_bio_audio import MambaConfig, MambaLM
from mamba_bio_audio.modules.mixer import set_backend

SHAPES = [(8, 2048), (1, 65536)]
WARMUP, STEPS = 3, 10


def build(mode: str, d_model: int, n_layer: int, device: str):
    torch.manual_seed(0)
    model = set_backend(MambaLM(MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=256, fused_inner=mode))
                        .to(device), "triton" if device == "cuda" else "reference")
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def step(model, opt, ids, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16):
        logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else None
    d_model, n_layer = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (768, 24)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for batch, seqlen in SHAPES if device == "cuda" else [(1, 64)]:
        ids = torch.randint(0, 256, (batch, seqlen + 1), device=device)
        times, peaks = {}, {}
        for mode in ("off", "triton"):  # peak memory: each mode alone
            model, opt = build(mode, d_model, n_layer, device)
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            for _ in range(WARMUP):
                step(model, opt, ids, device)
            times[mode] = [step(model, opt, ids, device) for _ in range(STEPS)]
            peaks[mode] = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
            del model, opt
        row = {"batch": batch, "seqlen": seqlen, **{f"s_per_step_{m}": statistics.median(t) for m, t in times.items()},
               **{f"peak_gib_{m}": p for m, p in peaks.items()}}
        row["speed_fused_vs_off"] = row["s_per_step_off"] / row["s_per_step_triton"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "d_model": d_model, "n_layer": n_layer, "warmup": WARMUP, "steps": STEPS, "autocast": "bf16",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
