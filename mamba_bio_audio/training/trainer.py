"""The trainer factory every recipe uses: device and precision, checkpoints every N steps, ``resume``, loggers.

Training checkpoints (optimizer, scheduler, step) are Lightning's own ``.ckpt`` files under ``OUT/checkpoints``,
written by this run and read back only on ``--resume`` of the same OUT folder. The model people share is the
``save_pretrained`` folder (safetensors), written at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mamba_bio_audio.errors import UserError

STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass
class TrainerConfig:
    """max_steps: optimizer steps. device: "auto" | "cpu" | "cuda" | "cuda:N". precision: None = bf16-mixed on
    GPU, 32-true on CPU. checkpoint_every: steps between training checkpoints (0 = only at the end)."""

    max_steps: int = 1000
    device: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None
    grad_clip: float = 1.0
    accumulate: int = 1
    checkpoint_every: int = 500
    val_every: int = 0
    log_every: int = 10
    deterministic: bool = False
    progress: bool = True
    callbacks: list[Callback] = field(default_factory=list)


def resolve_device(device: str) -> tuple[str, list[int] | int | str]:
    """("cpu" | "gpu", devices) for Lightning; a CUDA device asked for but missing is a UserError."""
    if device == "auto":
        return ("gpu", "auto") if torch.cuda.is_available() else ("cpu", 1)
    if device == "cpu":
        return "cpu", 1
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA GPU is available here")
        if ":" in device:
            try:
                index = int(device.split(":", 1)[1])
            except ValueError:
                raise UserError(f"--device {device}: expected cuda or cuda:N") from None
            if index >= torch.cuda.device_count():
                raise UserError(f"--device {device}: only {torch.cuda.device_count()} GPUs here")
            return "gpu", [index]
        return "gpu", "auto"
    raise UserError(f"--device {device}: expected auto, cpu, cuda or cuda:N")


def make_trainer(out_dir: str | Path, cfg: TrainerConfig) -> pl.Trainer:
    """A Lightning Trainer writing checkpoints and logs (CSV + TensorBoard) under ``out_dir``."""
    out_dir = Path(out_dir)
    accelerator, devices = resolve_device(cfg.device)
    if cfg.strategy not in STRATEGIES:
        raise UserError(f"--strategy {cfg.strategy}: expected one of {', '.join(STRATEGIES)}")
    if devices in ("auto", 1):  # "auto" would take every GPU: train on the number asked for (default 1)
        devices = cfg.devices
    precision = cfg.precision or ("bf16-mixed" if accelerator == "gpu" else "32-true")
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="step{step:07d}",
                                 auto_insert_metric_name=False, every_n_train_steps=cfg.checkpoint_every or None,
                                 save_top_k=1, save_last=True)
    callbacks = [checkpoint, LearningRateMonitor(logging_interval="step"), *cfg.callbacks]
    if cfg.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, cfg.log_every)))
    # version_0, version_1, ...: a resumed run logs beside the first part instead of overwriting it
    loggers = [CSVLogger(out_dir, name="logs"), TensorBoardLogger(out_dir, name="tensorboard")]
    return pl.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy,
        precision=precision,
        max_steps=cfg.max_steps, max_epochs=-1, gradient_clip_val=cfg.grad_clip or None,
        accumulate_grad_batches=cfg.accumulate, callbacks=callbacks, logger=loggers,
        log_every_n_steps=cfg.log_every, val_check_interval=cfg.val_every or None,
        check_val_every_n_epoch=None if cfg.val_every else 1, limit_val_batches=1.0 if cfg.val_every else 0,
        num_sanity_val_steps=0, enable_progress_bar=cfg.progress, enable_model_summary=False,
        deterministic=cfg.deterministic, default_root_dir=out_dir,
    )


def last_checkpoint(out_dir: str | Path) -> Path | None:
    path = Path(out_dir) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def fit(task: pl.LightningModule, datamodule: pl.LightningDataModule, out_dir: str | Path, cfg: TrainerConfig,
        resume: bool = False) -> pl.Trainer:
    """Train; with ``resume`` continue from ``out_dir/checkpoints/last.ckpt`` (a UserError if there is none)."""
    ckpt_path = None
    if resume:
        ckpt_path = last_checkpoint(out_dir)
        if ckpt_path is None:
            raise UserError(f"--resume: no checkpoint to resume from in {Path(out_dir) / 'checkpoints'}")
    trainer = make_trainer(out_dir, cfg)
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    trainer.save_checkpoint(Path(out_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    return trainer
