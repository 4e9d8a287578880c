"""Same loss curve on N devices as on one at the same global batch (Lightning DDP through the recipes' trainer).

``mba bench ddp`` trains a small MambaLM twice from the same seed on the same data order: (a) one device, global
batch B; (b) N devices with DDP, B / N per device. The data stream (:class:`mamba_bio_audio.training.data.
IndexedStream`) gives step k the samples k*B .. k*B + B - 1 in both runs (rank r of N takes the r-th slice of
B / N), each rank's loss is the mean over its equal slice, and DDP averages the gradients, so (b) computes the
gradient of (a) up to the order of floating-point sums. Each run is its own process (:func:`train_run`;
Lightning's DDP launcher re-runs that command for the other ranks); :func:`compare` then writes the curves (the
loss averaged over ranks, per step), their largest difference and a plot: OUT/ddp_loss_curve.json, .md and .png.
OUT/single and OUT/ddp hold each run's logs and curve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RUNS = ("single", "ddp")


@dataclass
class DDPCurveOptions:
    """What one ``mba bench ddp`` comparison trains (the command's flags)."""

    out: Path
    accelerator: str = "gpu"  # "cpu" | "gpu"
    devices: int = 2  # devices of the data-parallel run
    strategy: str = "ddp"  # "ddp" | "fsdp"
    steps: int = 50
    global_batch: int = 8  # sequences per optimizer step, over all devices
    seqlen: int = 1024
    d_model: int = 128
    n_layer: int = 4
    vocab: int = 16
    lr: float = 3e-3
    precision: str = "32-true"  # Lightning precision of both runs
    seed: int = 0


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


def train_run(opts: DDPCurveOptions, run: str) -> None:
    """One training run, ``run`` in RUNS ("single": one device at the global batch; "ddp": the data-parallel one)."""
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

    devices = 1 if run == "single" else opts.devices
    out = opts.out / run
    pl.seed_everything(opts.seed, verbose=False)
    model = MambaLM(MambaConfig(d_model=opts.d_model, n_layer=opts.n_layer, vocab_size=opts.vocab))
    task = LMTask(model, OptimConfig(lr=opts.lr, warmup=0.1, max_steps=opts.steps))
    data = IndexedDataModule(MarkovSamples(opts.vocab, opts.seqlen, opts.seed), opts.global_batch // devices)
    gpu = opts.accelerator == "gpu"
    # "cuda:0" for the single run: plain "cuda" lets Lightning take every GPU of the machine
    device = ("cuda:0" if devices == 1 else "cuda") if gpu else "cpu"
    cfg = TrainerConfig(max_steps=opts.steps, device=device, devices=devices,
                        strategy=opts.strategy if devices > 1 else "auto", precision=opts.precision,
                        checkpoint_every=0, log_every=1, progress=False, callbacks=[LossCurve(out / "curve.json")])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_float32_matmul_precision("highest")
    fit(task, data, out, cfg)


# ---- both runs, compared -----------------------------------------------------------------------------------------


def compare(opts: DDPCurveOptions) -> dict:
    """Read both runs' curves, write ddp_loss_curve.json/.md/.png under ``opts.out``, return the JSON data."""
    from mamba_bio_audio.benchmarks.report import environment, markdown_table, write_report
    from mamba_bio_audio.files import pyplot, save_figure

    curves = {name: json.loads((opts.out / name / "curve.json").read_text()) for name in RUNS}
    single, ddp = (np.array(curves[name]["loss"]) for name in RUNS)
    diff = np.abs(single - ddp)
    data = {"environment": environment(), "accelerator": opts.accelerator, "devices": opts.devices,
            "strategy": opts.strategy, "precision": opts.precision, "steps": opts.steps,
            "global_batch": opts.global_batch, "per_device_batch": opts.global_batch // opts.devices,
            "seqlen": opts.seqlen, "model": {"d_model": opts.d_model, "n_layer": opts.n_layer, "vocab": opts.vocab},
            "loss_single": single.tolist(), "loss_ddp": ddp.tolist(), "max_abs_diff": float(diff.max()),
            "max_rel_diff": float((diff / np.abs(single)).max()), "step_of_max_diff": int(diff.argmax())}
    env = data["environment"]
    rows = [[step, float(single[step]), float(ddp[step]), f"{diff[step]:.2e}"]
            for step in sorted({0, len(single) // 4, len(single) // 2, len(single) - 1, int(diff.argmax())})]
    md = "\n".join([
        f"# Same loss curve on {opts.devices} devices as on one ({opts.strategy}, global batch {opts.global_batch})",
        "", f"{env['device']}, torch {env['torch']}, {env['date']}; precision {opts.precision}. MambaLM d_model "
        f"{opts.d_model} x {opts.n_layer} layers on seqlen {opts.seqlen} (a random Markov chain), {opts.steps} "
        f"AdamW steps; one device at batch {opts.global_batch} vs {opts.devices} x {opts.global_batch // opts.devices}.",
        "", f"Largest difference of the per-step loss: **{data['max_abs_diff']:.2e}** (relative "
        f"{data['max_rel_diff']:.2e}, step {data['step_of_max_diff']}).", "",
        markdown_table(["step", "loss, 1 device", f"loss, {opts.devices} devices", "|difference|"], rows)])
    write_report(opts.out, "ddp_loss_curve", {"kind": "ddp", **data}, md)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(single, label=f"1 device, batch {opts.global_batch}")
    ax.plot(ddp, "--", label=f"{opts.devices} devices x {opts.global_batch // opts.devices} ({opts.strategy})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title(f"max |difference| {data['max_abs_diff']:.1e}")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, opts.out / "ddp_loss_curve.png")
    return data
