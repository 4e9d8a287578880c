"""Same loss curve on N devices as on one at the same global batch (Lightning DDP through the recipes' trainer).

Trains a small MambaLM twice from the same seed on the same data order: (a) one device, global batch B; (b) N
devices with DDP, B / N per device. The data stream (mamba_bio_audio.training.data.IndexedStream) gives step k
the samples k*B .. k*B + B - 1 in both runs (rank r of N takes the r-th slice of B / N), each rank's loss is the
mean over its equal slice, and DDP averages the gradients, so (b) computes the gradient of (a) up to the order of
floating-point sums. Each run is a subprocess (Lightning's DDP launcher re-runs this script for the other ranks);
the curves (the loss averaged over ranks, per step), their largest difference and a plot go to OUT:

    python tools/ddp_loss_curve.py --accelerator gpu --devices 2 --out DIR
    python tools/ddp_loss_curve.py --accelerator cpu --devices 2 --steps 10 --d-model 32 --n-layer 2 \\
        --seqlen 64 --global-batch 4 --out DIR                                             # tiny, gloo

Writes OUT/ddp_loss_curve.json, .md and .png; OUT/single and OUT/ddp hold each run's logs and curve.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

RUNS = ("single", "ddp")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--accelerator", choices=("cpu", "gpu"), default="gpu")
    p.add_argument("--devices", type=int, default=2, help="Devices of the data-parallel run.")
    p.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--global-batch", type=int, default=8, help="Sequences per optimizer step, over all devices.")
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--vocab", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--precision", default="32-true", help="Lightning precision of both runs.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", choices=RUNS, default=None, help=argparse.SUPPRESS)  # internal: one training run
    args = p.parse_args(argv)
    if args.global_batch % args.devices:
        p.error(f"--global-batch {args.global_batch} is not divisible by --devices {args.devices}")
    return args


# ---- data: a fixed random Markov chain (learnable, so the curve falls) ----------------------------------------


class MarkovSamples:
    """sample i -> {"input_ids": (seqlen + 1,) int64}: a walk on a fixed random chain, seeded by (seed, i)."""

    def __init__(self, vocab: int, seqlen: int, seed: int):
        rng = np.random.default_rng(seed)
        logits = rng.normal(size=(vocab, vocab)) * 3.0  # peaked transitions: entropy well below log(vocab)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        self.cdf = np.cumsum(probs / probs.sum(1, keepdims=True), axis=1)
        self.vocab, self.seqlen, self.seed = vocab, seqlen, seed

    def __call__(self, i: int) -> dict:
        import torch

        rng = np.random.default_rng([self.seed, i])
        u = rng.random(self.seqlen + 1)
        tokens = np.empty(self.seqlen + 1, dtype=np.int64)
        tokens[0] = int(u[0] * self.vocab)
        for t in range(1, self.seqlen + 1):
            tokens[t] = min(int(np.searchsorted(self.cdf[tokens[t - 1]], u[t])), self.vocab - 1)
        return {"input_ids": torch.from_numpy(tokens)}


# ---- one run (the Lightning process; rank 0 writes the curve) --------------------------------------------------


def train_run(args) -> None:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import Callback

    from mamba_bio_audio import MambaConfig, MambaLM
    from mamba_bio_audio.files import atomic_write_text
    from mamba_bio_audio.training.data import IndexedDataModule
    from mamba_bio_audio.training.module import LMTask, OptimConfig
    from mamba_bio_audio.training.trainer import TrainerConfig, fit

    class LossCurve(Callback):
        """The training loss of each step, averaged over ranks (= the loss of the global batch)."""

        def __init__(self, path: Path):
            self.path, self.losses = path, []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = trainer.strategy.reduce(outputs["loss"].detach().float(), reduce_op="mean")
            self.losses.append(float(loss))

        def on_train_end(self, trainer, pl_module):
            if trainer.is_global_zero:
                atomic_write_text(self.path, json.dumps({"loss": self.losses, "world_size": trainer.world_size}))

    devices = 1 if args.run == "single" else args.devices
    out = args.out / args.run
    pl.seed_everything(args.seed, verbose=False)
    model = MambaLM(MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=args.vocab))
    task = LMTask(model, OptimConfig(lr=args.lr, warmup=0.1, max_steps=args.steps))
    data = IndexedDataModule(MarkovSamples(args.vocab, args.seqlen, args.seed), args.global_batch // devices)
    gpu = args.accelerator == "gpu"
    # "cuda:0" for the single run: plain "cuda" lets Lightning take every GPU of the machine
    device = ("cuda:0" if devices == 1 else "cuda") if gpu else "cpu"
    cfg = TrainerConfig(max_steps=args.steps, device=device, devices=devices,
                        strategy=args.strategy if devices > 1 else "auto", precision=args.precision,
                        checkpoint_every=0, log_every=1, progress=False, callbacks=[LossCurve(out / "curve.json")])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_float32_matmul_precision("highest")
    fit(task, data, out, cfg)


# ---- both runs, compared -----------------------------------------------------------------------------------------


def compare(args) -> dict:
    from mamba_bio_audio.benchmarks.report import environment, markdown_table, write_report
    from mamba_bio_audio.files import pyplot, save_figure

    curves = {name: json.loads((args.out / name / "curve.json").read_text()) for name in RUNS}
    single, ddp = (np.array(curves[name]["loss"]) for name in RUNS)
    diff = np.abs(single - ddp)
    data = {"environment": environment(), "accelerator": args.accelerator, "devices": args.devices,
            "strategy": args.strategy, "precision": args.precision, "steps": args.steps,
            "global_batch": args.global_batch, "per_device_batch": args.global_batch // args.devices,
            "seqlen": args.seqlen, "model": {"d_model": args.d_model, "n_layer": args.n_layer, "vocab": args.vocab},
            "loss_single": single.tolist(), "loss_ddp": ddp.tolist(), "max_abs_diff": float(diff.max()),
            "max_rel_diff": float((diff / np.abs(single)).max()), "step_of_max_diff": int(diff.argmax())}
    env = data["environment"]
    rows = [[step, float(single[step]), float(ddp[step]), f"{diff[step]:.2e}"]
            for step in sorted({0, len(single) // 4, len(single) // 2, len(single) - 1, int(diff.argmax())})]
    md = "\n".join([
        f"# Same loss curve on {args.devices} devices as on one ({args.strategy}, global batch {args.global_batch})",
        "", f"{env['device']}, torch {env['torch']}, {env['date']}; precision {args.precision}. MambaLM d_model "
        f"{args.d_model} x {args.n_layer} layers on seqlen {args.seqlen} (a random Markov chain), {args.steps} "
        f"AdamW steps; one device at batch {args.global_batch} vs {args.devices} x {args.global_batch // args.devices}.",
        "", f"Largest difference of the per-step loss: **{data['max_abs_diff']:.2e}** (relative "
        f"{data['max_rel_diff']:.2e}, step {data['step_of_max_diff']}).", "",
        markdown_table(["step", "loss, 1 device", f"loss, {args.devices} devices", "|difference|"], rows)])
    write_report(args.out, "ddp_loss_curve", data, md)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(single, label=f"1 device, batch {args.global_batch}")
    ax.plot(ddp, "--", label=f"{args.devices} devices x {args.global_batch // args.devices} ({args.strategy})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title(f"max |difference| {data['max_abs_diff']:.1e}")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, args.out / "ddp_loss_curve.png")
    return data


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run is not None:
        train_run(args)
        return 0
    forwarded = sys.argv[1:] if argv is None else list(argv)
    for name in RUNS:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *forwarded, "--run", name])
        if proc.returncode != 0:
            print(f"ddp_loss_curve: the {name} run failed (exit code {proc.returncode})", file=sys.stderr)
            return 2
    data = compare(args)
    print(f"max |loss difference| over {args.steps} steps: {data['max_abs_diff']:.3e}; wrote "
          f"{args.out / 'ddp_loss_curve.json'}, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
