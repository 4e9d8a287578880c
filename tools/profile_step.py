"""Where one training step's GPU time goes: torch.profiler over AdamW steps of the 90.7M MambaLM.

    python tools/profile_step.py --out DIR [--batch 8 --seqlen 2048 --d-model 768 --n-layer 24]

Writes profile_step.txt (the CUDA-time table by kernel, top 40) under --out.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F


def main() -> None:
    from mamba_bio_audio import MambaConfig, MambaLM

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--n-layer", type=int, default=24)
    ap.add_argument("--backend", default="triton")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=256)).cuda()
    from mamba_bio_audio.modules.mixer import set_backend

    set_backend(model, args.backend)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 256, (args.batch, args.seqlen + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=70)
    by_shape = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=40, max_shapes_column_width=100)
    table = table + "\n\nBy operator and input shapes:\n" + by_shape
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile_step.txt"), "w") as f:
        f.write(f"{args}\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
