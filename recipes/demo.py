"""``mba demo``: train a tiny Mamba LM on built-in synthetic data (no download), then sample from it.

Shows the whole stack on any machine in about a minute on a laptop CPU: data -> model -> Lightning training ->
save_pretrained -> recurrent generation -> metrics.json and a loss plot.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from mamba_bio_audio.recipes.options import common_options, out_option
from mamba_bio_audio.recipes.outputs import (
    plot_curve,
    prepare_out_dir,
    read_csv_metric,
    write_json,
    write_yaml,
)

VAL_OFFSET = 10**12


@click.command("demo")
@out_option(required=False, help_text="Output folder [default: ./mba-demo].")
@click.option("--max-steps", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seqlen", type=click.IntRange(min=8), default=128, show_default=True)
@common_options
def demo(out: Path | None, max_steps: int, batch_size: int, seqlen: int, device: str, seed: int) -> None:
    """Train and sample a tiny LM on a synthetic motif language (see data_prep/motifs.py)."""
    import lightning.pytorch as pl
    import torch

    from mamba_bio_audio import MambaConfig, MambaLM
    from mamba_bio_audio.data_prep.motifs import MotifLanguage
    from mamba_bio_audio.training.data import IndexedDataModule
    from mamba_bio_audio.training.module import LMTask, OptimConfig
    from mamba_bio_audio.training.trainer import TrainerConfig, fit

    out = prepare_out_dir(out or Path("mba-demo"))
    pl.seed_everything(seed, verbose=False)
    language = MotifLanguage(seed=seed)
    config = MambaConfig(d_model=64, n_layer=2, vocab_size=language.vocab, d_state=16)
    model = MambaLM(config)
    settings = {"command": "demo", "max_steps": max_steps, "batch_size": batch_size, "seqlen": seqlen,
                "device": device, "seed": seed, "model": config.to_dict()}
    write_yaml(out / "config.yaml", settings)

    def sample(i: int) -> dict:
        return {"input_ids": torch.from_numpy(language.sample(i, seqlen + 1))}

    val = [sample(VAL_OFFSET + i) for i in range(64)]  # indices training never reaches
    task = LMTask(model, OptimConfig(lr=3e-3, weight_decay=0.1, warmup=0.1, max_steps=max_steps))
    started = time.time()
    fit(task, IndexedDataModule(sample, batch_size, val_samples=val), out,
        TrainerConfig(max_steps=max_steps, device=device, val_every=max(1, max_steps // 5),
                      checkpoint_every=max(1, max_steps // 2), log_every=10))
    train_seconds = time.time() - started

    model.eval()
    with torch.no_grad():
        ids = torch.stack([v["input_ids"] for v in val])
        task.to(ids.device)
        val_bits = task.compute_loss({"input_ids": ids.to(next(model.parameters()).device)})[1]["bits_per_token"]
    model.save_pretrained(out / "model")
    prompt = torch.from_numpy(language.sample(10**6, 12))[None].to(next(model.parameters()).device)
    generated = model.generate(prompt, max_new_tokens=60, temperature=0.7, seed=seed)[0].tolist()
    letters = "ACGT"
    text = "".join(letters[t] for t in generated)
    motifs = [" ".join("".join(letters[t] for t in m) for m in language.motifs)]
    (out / "samples.txt").write_text(f"prompt+generated: {text}\nmotifs: {motifs[0]}\n")
    steps, losses = read_csv_metric(out / "logs", "train/bits_per_token")
    plot_curve(out / "loss.png", steps, losses, "step", "train bits per token",
               f"mba demo: floor ~{language.entropy_bits():.2f} bits, uniform 2 bits")
    metrics = {"val_bits_per_token": float(val_bits), "uniform_bits_per_token": 2.0,
               "entropy_floor_bits_per_token": language.entropy_bits(), "train_seconds": train_seconds,
               "max_steps": max_steps, "parameters": sum(p.numel() for p in model.parameters())}
    write_json(out / "metrics.json", metrics)
    click.echo(f"validation: {metrics['val_bits_per_token']:.3f} bits/token "
               f"(uniform 2.000, floor ~{metrics['entropy_floor_bits_per_token']:.2f}) after {max_steps} steps, "
               f"{train_seconds:.0f} s")
    click.echo(f"sample: {text}")
    click.echo(f"wrote {out}/: metrics.json, loss.png, samples.txt, model/, logs/")
