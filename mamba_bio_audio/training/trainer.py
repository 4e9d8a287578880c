"""The trainer factory every recipe uses: device and precision, checkpoints every N steps, ``resume``, loggers.

Training checkpoints (optimizer, scheduler, step) are Lightning's own ``.ckpt`` files under ``OUT/checkpoints``,
written by this run and read back only on ``--resume`` of the same OUT folder. The model people share is the
``save_pretrained`` folder (safetensors), written at the end.

Reliability: a training checkpoint is only ever read with ``torch.load(weights_only=True)`` and an allow-list of
the types our checkpoints hold (:func:`load_training_checkpoint`), whatever the torch version or
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``; the trainer options are checked when a :class:`TrainerConfig` is made, before
a recipe writes anything; SIGTERM / SIGINT stop at the next optimizer step with a resumable checkpoint
(:class:`~mamba_bio_audio.training.callbacks.GracefulStop`, then :class:`~mamba_bio_audio.errors.TrainingStopped`);
Lightning's banners, tips and deprecation notices are silenced (progress bars stay).
"""

from __future__ import annotations

import json
import logging
import pickle
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mamba_bio_audio.devices import torch_device
from mamba_bio_audio.errors import CheckpointError, TrainingStopped, UserError
from mamba_bio_audio.files import atomic_write_text
from mamba_bio_audio.training.budget import WallClockBudget, default_precision
from mamba_bio_audio.training.callbacks import GracefulStop
from mamba_bio_audio.training.progress import progress_callback

STRATEGIES = ("auto", "ddp", "fsdp")
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "bf16", "16-mixed", "16-true", "16", "64-true", "64")


@dataclass
class TrainerConfig:
    """max_steps: optimizer steps. device: "auto" | "cpu" | "cuda" | "cuda:N". precision: None = bf16-mixed on
    GPU, 32-true on CPU. checkpoint_every: steps between training checkpoints (0 = only at the end).
    max_minutes: a wall-clock budget; training ends at the first step past it
    (:class:`~mamba_bio_audio.training.budget.WallClockBudget`)."""

    max_steps: int = 1000
    max_minutes: float | None = None
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

    def __post_init__(self) -> None:
        check_trainer_config(self)


def check_trainer_config(cfg: TrainerConfig) -> None:
    """Device, strategy and precision as one-line UserErrors, before anything is written or trained."""
    if str(cfg.device).startswith("cuda:") and cfg.devices * cfg.num_nodes > 1:
        raise UserError(f"--device {cfg.device} names one GPU, but --devices {cfg.devices} (x {cfg.num_nodes} nodes) "
                        "asks for several: use --device cuda (and CUDA_VISIBLE_DEVICES to choose them)")
    accelerator, _ = resolve_device(cfg.device)
    if cfg.max_minutes is not None and not cfg.max_minutes > 0:
        raise UserError(f"--max-minutes must be positive, got {cfg.max_minutes}")
    if cfg.strategy not in STRATEGIES:
        raise UserError(f"--strategy {cfg.strategy}: expected one of {', '.join(STRATEGIES)}")
    if cfg.strategy == "fsdp" and accelerator != "gpu":
        raise UserError("--strategy fsdp: needs CUDA GPUs (this run is on the CPU)")
    if cfg.precision is not None and str(cfg.precision) not in PRECISIONS:
        raise UserError(f"--precision {cfg.precision}: expected one of {', '.join(p for p in PRECISIONS if '-' in p)}")
    if cfg.precision is not None and str(cfg.precision).startswith("16") and accelerator != "gpu":
        raise UserError(f"--precision {cfg.precision}: float16 needs a CUDA GPU (on the CPU use 32-true or bf16-mixed)")


def resolve_device(device: str) -> tuple[str, list[int] | int | str]:
    """``--device`` (parsed by :func:`~mamba_bio_audio.devices.torch_device`) as Lightning's (accelerator,
    devices): ``("cpu", 1)``, ``("gpu", "auto")`` for ``cuda`` (or ``auto`` with a GPU), ``("gpu", [N])`` for
    ``cuda:N``; a bad name or a missing GPU is its one-line UserError."""
    where = torch_device(device)
    if where.type == "cpu":
        return "cpu", 1
    return "gpu", "auto" if where.index is None else [where.index]


def make_trainer(out_dir: str | Path, cfg: TrainerConfig) -> pl.Trainer:
    """A Lightning Trainer writing checkpoints and logs (CSV + TensorBoard) under ``out_dir``."""
    out_dir = Path(out_dir)
    check_trainer_config(cfg)
    quiet_lightning()
    accelerator, devices = resolve_device(cfg.device)
    if devices in ("auto", 1):  # "auto" would take every GPU: train on the number asked for (default 1)
        devices = cfg.devices
    precision = cfg.precision or default_precision("cuda" if accelerator == "gpu" else "cpu")
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="step{step:07d}",
                                 auto_insert_metric_name=False, every_n_train_steps=cfg.checkpoint_every or None,
                                 save_top_k=1, save_last=True,
                                 # last.ckpt is also written by GracefulStop and at the end of fit: without this,
                                 # Lightning saves "its" last checkpoint as last-v1.ckpt beside one it did not
                                 # write, and a resumed run's last.ckpt stays at the stop
                                 enable_version_counter=False)
    callbacks = [checkpoint, LearningRateMonitor(logging_interval="step"), *cfg.callbacks,
                 GracefulStop(out_dir / "checkpoints" / "last.ckpt")]
    if cfg.max_minutes is not None:
        callbacks.append(WallClockBudget(60 * cfg.max_minutes))
    if cfg.progress:
        callbacks.append(progress_callback(cfg.log_every))  # tqdm's bar on a terminal, plain lines in a file
    # version_0, version_1, ...: a resumed run logs beside the first part instead of overwriting it
    loggers = [CSVLogger(out_dir, name="logs"), TensorBoardLogger(out_dir, name="tensorboard")]
    return pl.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy,
        precision=precision,
        max_steps=cfg.max_steps, max_epochs=-1, gradient_clip_val=cfg.grad_clip or None,
        accumulate_grad_batches=cfg.accumulate, callbacks=callbacks, logger=loggers,
        log_every_n_steps=cfg.log_every, val_check_interval=cfg.val_every or None,
        check_val_every_n_epoch=None if cfg.val_every else 1, limit_val_batches=1.0 if cfg.val_every else 0,
        num_sanity_val_steps=0, enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        enable_model_summary=False,
        deterministic=cfg.deterministic, default_root_dir=out_dir, plugins=[SafeCheckpointIO()],
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
        # refuse a corrupt or unsafe file before Lightning touches it; say so when nothing is left to train
        # (Lightning trains no step: the run is saved and scored again as it was, so a retried job stays a no-op)
        done = int(load_training_checkpoint(ckpt_path, mmap=True).get("global_step", 0))
        if cfg.max_steps is not None and 0 < cfg.max_steps <= done and getattr(rank_zero_only, "rank", 0) == 0:
            print(f"--resume: the run in {out_dir} is already at step {done}, at or past --max-steps "
                  f"{cfg.max_steps}: nothing to train (a larger --max-steps trains on)", file=sys.stderr)
    trainer = make_trainer(out_dir, cfg)
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    stop = next(c for c in trainer.callbacks if isinstance(c, GracefulStop))
    if stop.stopped_by is not None:
        if trainer.is_global_zero:
            atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(
                {"stopped_by": stop.stopped_by, "global_step": trainer.global_step,
                 "checkpoint": str(stop.path)}, indent=2, sort_keys=True) + "\n")
        raise TrainingStopped(stop.stopped_by, trainer.global_step, Path(out_dir))
    trainer.save_checkpoint(Path(out_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    if cfg.strategy == "fsdp":
        unshard_parameters(trainer.strategy.model, task)
    return trainer


def unshard_parameters(wrapped: torch.nn.Module, module: torch.nn.Module) -> None:
    """Give ``module``'s parameters their full tensors again after FSDP training. ``wrapped`` is the
    ``FullyShardedDataParallel`` around ``module`` (Lightning's ``trainer.strategy.model``, ``use_orig_params=True``):
    when ``fit`` returns, each of ``module``'s parameters is a 1-D view of this rank's shard (empty where the
    weight lies in another rank's), so saving or scoring the model would see no weights. A collective: every rank
    calls it. Afterwards the parameters are plain tensors on each rank (the FSDP wrapper is not to be used again)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(wrapped, writeback=False):
        full = {name: p.detach().clone() for name, p in module.named_parameters()}
    for name, p in module.named_parameters():
        p.data = full[name]


# ---- safe checkpoint loading ---------------------------------------------------------------------------------------
def _safe_globals() -> list:
    """The non-tensor types our training checkpoints may hold besides torch's own allow-list (dicts, lists, tuples,
    numbers, strings, tensors, OrderedDict): Lightning's hyper-parameter dict."""
    from lightning.fabric.utilities.data import AttributeDict

    return [AttributeDict]


def load_training_checkpoint(path: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """A Lightning ``.ckpt`` read with ``torch.load(weights_only=True)`` (passed explicitly, so that neither an old
    torch's default nor ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` can turn unpickling of arbitrary objects back on).
    ``mmap``: tensors are mapped from the file, not read (for a look at names and shapes).

    A file that is truncated or not a checkpoint, or one that needs types outside the allow-list (a planted pickle
    that would run code), raises a one-line :class:`CheckpointError`.
    """
    path = Path(path)
    torch.serialization.add_safe_globals(_safe_globals())
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((line.strip() for line in first if "Unsupported global" in line or "GLOBAL" in line), "")
        raise CheckpointError(f"{path}: refusing to load it, it holds objects beyond tensors and plain values "
                              f"(not a checkpoint this program wrote){': ' + detail if detail else ''}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: truncated or not a training checkpoint ({type(e).__name__})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning training checkpoint (no state_dict)")
    return checkpoint


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with every load through :func:`load_training_checkpoint`."""

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_training_checkpoint(path, map_location=map_location or "cpu")


# ---- quiet -------------------------------------------------------------------------------------------------------
_LIGHTNING_CHATTER = (
    "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda", "lightning.pytorch.utilities.distributed",
    "lightning.fabric.utilities.distributed", "lightning.pytorch.trainer.connectors.signal_connector",
    "lightning.pytorch.trainer.connectors.checkpoint_connector", "lightning.pytorch.callbacks.model_checkpoint",
)


def quiet_lightning() -> None:
    """Silence Lightning's informational banners ("GPU available", the "Tip:" advertisement, "`Trainer(...)` was
    configured") and deprecation notices from the libraries it calls; warnings and errors still show, and the
    progress bar (stderr, not logging) is untouched."""
    for name in _LIGHTNING_CHATTER:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"lightning(\.|$)")
    warnings.filterwarnings("ignore", message=r".*is deprecated.*", module=r"lightning\..*")
    warnings.filterwarnings("ignore", message=r".*(litlogger|litmodels|LitLogger).*")
    # a resumed run writes into its own checkpoints/ again: expected, not worth a warning
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # a resume with another --checkpoint-every: ModelCheckpoint's state (best-model bookkeeping, unused here) has
    # another key; only that one callback (any other state-bearing callback missing still warns)
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create the "
                                              r"checkpoint need to be provided during `Trainer` instantiation\. Please "
                                              r'add the following callbacks: \["ModelCheckpoint\{[^}]*\}"\]\.$')
