"""Training DNA models on windows of a token store: presets, settings and one planner for ``mba species train``
(:mod:`~mamba_bio_audio.tasks.species`) and ``mba dna pretrain`` (:mod:`~mamba_bio_audio.tasks.dna_lm`).

Every DNA model reads token ids of the "hyena-12" tokenizer (:mod:`mamba_bio_audio.data_prep.dna.tokenizer`,
``vocab_size`` 12) and is trained on windows of a DNA token store (:mod:`mamba_bio_audio.data_prep.dna.windows`):
item ``i`` of the training stream is a pure function of ``(seed, i)``, so ``--resume`` continues exactly.

Windows travel as uint8 ``(batch, seqlen)`` tensors and become int64 only on the device
(:meth:`WindowData.on_after_batch_transfer`): at 2^20 bases a window is 1 MiB instead of 8 MiB in the
loader, the pinned buffer and the host-to-device copy.

Presets (``PRESETS``), with d_state 16 (except ``demo``) and expand 2 throughout:

- ``tiny``: d_model 64, 2 blocks (67 k parameters): CPU-sized, for demos and tests.
- ``demo``: d_model 64, 1 block, d_state 1, dt_min 0.01 (28 k parameters): ``mba demo``'s model, several times the
  tokens per second of ``tiny`` on a CPU (its synthetic species differ in short-word statistics, which need no long
  memory). It trains on 256-base windows; dt_min 0.01 keeps its initial memory (1 / dt) under 100 bases, so that
  its mean-pooled states are alike in short and long windows.
- ``paper-1.4m``: d_model 128, 12 blocks (1.40 M). The Mamba paper's DNA models across context lengths are, as
  we recall its Section 4.3, "6 layers by width 128 (about 1.3M-1.4M parameters)", where one paper layer is two
  Mamba blocks (as in the mamba_ssm README's model table); 12 blocks of width 128 count exactly 1.40 M here.
- ``paper-7m``: d_model 256, 16 blocks (7.01 M): the paper's Great Apes "Mamba 7M", whose shape we did not find
  spelled out; width 256 with 16 blocks (8 paper layers) is the model of 7 M parameters.

Training defaults of the paper presets follow the Great Apes recipe as we recall the paper's appendix (batch 64, a
linear warm-up over half of training, a cosine decay to 1e-6 (``min_lr_ratio`` 0.01), a sequence-length warm-up
from 2^14, one stage per tenth of training), except the peak learning rate: 1e-3 instead of the paper's 1e-4, which
learned less in the same GPU time in the species A/B (``results/dna/ab.md``). Pretraining learning rates are our
defaults, not the paper's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from mamba_bio_audio.checkpoint import CONFIG_NAME
from mamba_bio_audio.config import MambaConfig
from mamba_bio_audio.data_prep.dna.tokenizer import NAME as TOKENIZER
from mamba_bio_audio.data_prep.dna.tokenizer import VOCAB_SIZE
from mamba_bio_audio.data_prep.dna.windows import WindowSampler, WindowSet, check_genome_store, eval_windows
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.errors import CheckpointError, DataError, UserError
from mamba_bio_audio.training.budget import check_budget_plan
from mamba_bio_audio.training.data import IndexedDataModule
from mamba_bio_audio.training.module import ClassificationTask, LMTask, OptimConfig
from mamba_bio_audio.training.trainer import TrainerConfig, last_checkpoint

DEFAULT_MAX_STEPS = 1000  # optimizer steps of a run given neither --max-steps nor --max-minutes
WARMUP_ABOVE = 2**14  # the sequence-length warm-up is on by default above this window length (HyenaDNA, Mamba)
CHECKPOINT_ACTIVATIONS_FROM = 2**17  # activation checkpointing is on by default from this window length


# ---- presets and models --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DnaPreset:
    """A DNA model size with its training defaults.

    ``batch_size`` is the most windows per optimizer step; the default batch is also capped at ``max_batch_tokens``
    tokens (so a 2^20 window trains one at a time: use ``--accumulate`` or more devices for bigger batches).
    ``warmup`` is the learning-rate warm-up as a fraction of the steps; ``min_lr_ratio`` ends the cosine decay.
    """

    d_model: int
    n_layer: int
    batch_size: int
    max_batch_tokens: int
    lr: float
    pretrain_lr: float
    warmup: float
    min_lr_ratio: float
    d_state: int = 16
    dt_min: float = 0.001

    def model_config(self, bidirectional: bool = False) -> MambaConfig:
        return MambaConfig(d_model=self.d_model, n_layer=self.n_layer, vocab_size=VOCAB_SIZE, d_state=self.d_state,
                           expand=2, dt_min=self.dt_min, bidirectional=bidirectional)


PRESETS = {
    "tiny": DnaPreset(d_model=64, n_layer=2, batch_size=16, max_batch_tokens=2**16, lr=1e-2, pretrain_lr=2e-3,
                      warmup=0.1, min_lr_ratio=0.1),
    "paper-1.4m": DnaPreset(d_model=128, n_layer=12, batch_size=64, max_batch_tokens=2**20, lr=1e-3,
                            pretrain_lr=1e-3, warmup=0.5, min_lr_ratio=0.01),
    "paper-7m": DnaPreset(d_model=256, n_layer=16, batch_size=64, max_batch_tokens=2**20, lr=1e-3,
                          pretrain_lr=1e-3, warmup=0.5, min_lr_ratio=0.01),
    "demo": DnaPreset(d_model=64, n_layer=1, batch_size=32, max_batch_tokens=2**13, lr=5e-3, pretrain_lr=2e-3,
                      warmup=0.1, min_lr_ratio=0.1, d_state=1, dt_min=0.01),
}


def preset_name_of(config: MambaConfig) -> str | None:
    """The name of the preset with ``config``'s shape (d_model, n_layer), or None."""
    return next((name for name, p in PRESETS.items() if (p.d_model, p.n_layer) == (config.d_model, config.n_layer)),
                None)


def get_preset(name: str) -> DnaPreset:
    if name not in PRESETS:
        raise UserError(f"--preset {name}: expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def dna_extra(window: int) -> dict:
    """What a saved DNA model records beside its weights: its tokenizer and the window length it was trained on."""
    return {"dna": {"tokenizer": TOKENIZER, "window": window}}


def model_dir(path: str | os.PathLike) -> Path:
    """The ``save_pretrained`` folder of a run folder (``RUN/model``) or of a model folder itself, local or a
    Hugging Face Hub id ``org/name[@revision]`` (:func:`mamba_bio_audio.hub.resolve`)."""
    from mamba_bio_audio.hub import resolve

    path = resolve(path)
    if (path / "model" / CONFIG_NAME).is_file():
        return path / "model"
    if (path / CONFIG_NAME).is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or model folder")
    raise CheckpointError(f"{path}: not a run folder (no model/{CONFIG_NAME}) nor a model folder (no {CONFIG_NAME})")


def weights_input(checkpoint: str | os.PathLike) -> Path:
    """The folder a command that loads ``checkpoint`` reads: ``RUN/model`` of a run folder that holds one, else
    ``checkpoint`` itself. Passed as the input an output folder must not overlap, so that ``--out RUN/eval`` (beside
    the weights, inside the run) is allowed while ``--out RUN`` or a folder inside ``RUN/model`` is refused."""
    path = Path(checkpoint)
    return path / "model" if (path / "model").is_dir() else path


def check_dna_config(config: MambaConfig, source: str | os.PathLike) -> None:
    """A model for the hyena-12 tokenizer, or a CheckpointError naming ``source``."""
    tokenizer = config.extra.get("dna", {}).get("tokenizer", TOKENIZER)
    if config.vocab_size != VOCAB_SIZE or tokenizer != TOKENIZER:
        raise CheckpointError(f"{source}: a model for vocab {config.vocab_size} ({tokenizer}), DNA models here read "
                              f"the {VOCAB_SIZE}-token {TOKENIZER} tokenizer")


def is_main_process() -> bool:
    """False in the extra processes a multi-device run launches (they must not write the run's outputs)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


# ---- training set-up shared by species classification and LM pretraining -----------------------------------------
@dataclass
class TrainSettings:
    """What a DNA training run needs besides its data. ``None`` means "the preset's value" (or "automatic").

    length: window length in tokens. preset: a name in ``PRESETS`` (None: "tiny", or the shape of an ``init_from``).
    max_steps: optimizer steps (None: 1000, or with ``max_minutes`` as many as the measured step time fits in the
    budget, :func:`~mamba_bio_audio.training.budget.planned_steps`). max_minutes: a wall-clock budget for training;
    the run stops at the first step past it either way.
    warmup_min_length: first stage of the sequence-length warm-up (None: 2^14 when ``length`` > 2^14, else off;
    0: off); stages double up to ``length``, ``warmup_stage_steps`` steps each (None: a tenth of ``max_steps``).
    checkpoint_activations: None = on from 2^17 tokens. rc_prob: reverse-complement probability of a training
    window. val_per_species: validation windows per species (0: no validation). val_every / checkpoint_every: steps
    (None: five validations per run; 500).
    """

    length: int
    max_steps: int | None = None
    max_minutes: float | None = None
    preset: str | None = None
    batch_size: int | None = None
    lr: float | None = None
    accumulate: int = 1
    warmup_min_length: int | None = None
    warmup_stage_steps: int | None = None
    checkpoint_activations: bool | None = None
    rc_prob: float = 0.5
    max_n_fraction: float = 0.1
    val_per_species: int = 8
    val_every: int | None = None
    checkpoint_every: int = 500
    num_workers: int = 0
    device: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.length < 2:
            raise UserError(f"--length must be at least 2, got {self.length}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max-steps must be positive, got {self.max_steps}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise UserError(f"--max-minutes must be positive, got {self.max_minutes}")
        check_budget_plan(self.max_steps, self.max_minutes, self.devices * self.num_nodes)
        if not 0 <= self.rc_prob <= 1:
            raise UserError(f"--rc-prob must lie in [0, 1], got {self.rc_prob}")


def batch_size_for(preset: DnaPreset, settings: TrainSettings) -> int:
    """The given batch size, else the preset's, capped at its token budget (at least one window)."""
    if settings.batch_size is not None:
        if settings.batch_size < 1:
            raise UserError(f"--batch-size must be positive, got {settings.batch_size}")
        return settings.batch_size
    return max(1, min(preset.batch_size, preset.max_batch_tokens // settings.length))


def warmup_stages(settings: TrainSettings) -> tuple[int, int] | None:
    """``(min_length, steps_per_stage)`` of the sequence-length warm-up, or None when it is off."""
    first = settings.warmup_min_length
    if first is None:
        first = WARMUP_ABOVE if settings.length > WARMUP_ABOVE else 0
    if first == 0:
        return None
    stages = settings.length / first
    if first < 1 or first >= settings.length or stages != 2 ** round(math.log2(stages)):
        raise UserError(f"--warmup-min-length {first}: the window length {settings.length} must be it times a "
                        f"power of two (the warm-up doubles the length each stage)")
    steps = settings.warmup_stage_steps or max(1, settings.max_steps // 10)
    return first, steps


def trainer_config(settings: TrainSettings, callbacks: list, validate: bool) -> TrainerConfig:
    val_every = settings.val_every if settings.val_every is not None else max(1, settings.max_steps // 5)
    if not validate:
        val_every = 0
    return TrainerConfig(max_steps=settings.max_steps, max_minutes=settings.max_minutes, device=settings.device,
                         devices=settings.devices,
                         num_nodes=settings.num_nodes,
                         strategy=settings.strategy, accumulate=settings.accumulate,
                         checkpoint_every=settings.checkpoint_every, val_every=val_every,
                         log_every=max(1, min(10, settings.max_steps // 10)),
                         progress=settings.progress, callbacks=callbacks)


def optim_config(preset: DnaPreset, settings: TrainSettings, lr: float) -> OptimConfig:
    return OptimConfig(lr=lr, warmup=preset.warmup, min_lr_ratio=preset.min_lr_ratio, max_steps=settings.max_steps)


def warmup_callbacks(settings: TrainSettings) -> tuple[list, dict | None]:
    """The SeqLenWarmup callback (or none) and its JSON description."""
    from mamba_bio_audio.training.callbacks import SeqLenWarmup, warmup_schedule

    stages = warmup_stages(settings)
    if stages is None:
        return [], None
    first, steps = stages
    return [SeqLenWarmup(first, settings.length, steps)], {
        "min_length": first, "steps_per_stage": steps,
        "stages": [{"from_step": s, "length": n} for s, n in warmup_schedule(first, settings.length, steps)]}


class WindowData(IndexedDataModule):
    """:class:`~mamba_bio_audio.training.data.IndexedDataModule` of uint8 windows: ``input_ids`` become int64 only
    after the copy to the device (a 2^20-base window moves as 1 MiB, not 8)."""

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        ids = batch["input_ids"]
        return batch if ids.dtype == torch.long else {**batch, "input_ids": ids.long()}


class WindowTokens:
    """``sample_fn(i)`` of a :class:`WindowSampler`: ``{"input_ids": uint8 (length,)}`` plus ``"label"`` () int64
    when ``labels``. A class rather than a closure, so DataLoader workers can pickle it."""

    def __init__(self, sampler: WindowSampler, labels: bool):
        self.sampler = sampler
        self.labels = labels

    def __call__(self, i: int) -> dict[str, torch.Tensor]:
        tokens, label = self.sampler[i]
        item = {"input_ids": torch.from_numpy(tokens)}
        if self.labels:
            item["label"] = torch.tensor(label, dtype=torch.long)
        return item


def open_store(path: str | os.PathLike) -> TokenStore:
    store = TokenStore(path)
    check_genome_store(store)
    return store


def validation_windows(store: TokenStore, settings: TrainSettings) -> tuple[WindowSet | None, str | None]:
    """Fixed validation windows of the "val" split, or ``(None, why not)`` when the store cannot give them."""
    if settings.val_per_species == 0:
        return None, "--val-per-species 0"
    try:
        return eval_windows(store, "val", settings.length, settings.val_per_species, settings.seed + 1,
                            max_n_fraction=settings.max_n_fraction), None
    except DataError as e:
        return None, str(e)


def refuse_to_overwrite(out: Path, resume: bool) -> None:
    """A fresh run must not silently add to a folder that already holds a training run."""
    if not resume and last_checkpoint(out) is not None:
        raise UserError(f"--out {out}: already holds a training run (checkpoints/last.ckpt); pass --resume to "
                        f"continue it, or choose another folder")


def require_unless_resume(params: dict, resume: bool, *names: str) -> None:
    """Options a fresh run needs and a ``--resume`` takes from the run's ``config.yaml``: one missing from
    ``params`` (a command's option values; ``None`` when not given) on a fresh run is a one-line UserError."""
    missing = [name for name in names if params.get(name) is None]
    if missing and not resume:
        flag = "--" + missing[0].replace("_", "-")
        raise UserError(f"missing option {flag} (needed for a new run; a --resume takes the run's)")


@dataclass
class TrainResult:
    """What a fit did: ``seconds`` of wall-clock, optimizer ``steps`` reached, and whether the wall-clock budget
    ended it before ``max_steps`` (``budget_cut``)."""

    seconds: float
    steps: int
    budget_cut: bool

    def metrics(self) -> dict:
        """``train_seconds``, ``steps``, ``budget_cut``, and ``stopped_by: "max_minutes"`` when the budget cut the run
        (``stopped_by`` is present only for runs stopped early: by the budget here, by a signal elsewhere)."""
        cut = {"stopped_by": "max_minutes"} if self.budget_cut else {}
        return {"train_seconds": round(self.seconds, 1), "steps": self.steps, "budget_cut": self.budget_cut, **cut}


def train_and_export(task, datamodule, out: Path, tcfg: TrainerConfig, resume: bool) -> TrainResult:
    """Fit (or resume), then on the main process save the model to ``out/model``."""
    from mamba_bio_audio.training.budget import budget_callback
    from mamba_bio_audio.training.trainer import fit

    started = time.time()
    trainer = fit(task, datamodule, out, tcfg, resume=resume)
    seconds = time.time() - started
    budget = budget_callback(trainer)
    result = TrainResult(seconds, int(trainer.global_step), budget is not None and budget.cut)
    if is_main_process():  # under FSDP, fit has given the parameters their full tensors back
        task.model.save_pretrained(out / "model")
    return result


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def batches(windows: Iterable[np.ndarray], batch_size: int | None = None) -> Iterator[np.ndarray]:
    """Stack consecutive windows of equal length into ``(b, seqlen)`` arrays of at most ``batch_size`` rows
    (None: :func:`eval_batch_size` of their length)."""
    group: list[np.ndarray] = []
    for w in windows:
        if group and (w.size != group[0].size or len(group) == eval_batch_size(group[0].size, batch_size)):
            yield np.stack(group)
            group = []
        group.append(np.asarray(w))
    if group:
        yield np.stack(group)


def eval_batch_size(length: int, batch_size: int | None, budget_tokens: int = 2**18) -> int:
    """The given batch size, else as many windows as fit ``budget_tokens`` (1 to 64)."""
    return batch_size if batch_size else max(1, min(64, budget_tokens // max(1, length)))


def autocast(device: torch.device):
    """bf16 autocast on CUDA (as training), a no-op context on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                     enabled=False)


@contextmanager
def evaluating(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Run ``model`` for inference on ``device``: moved there first, outside inference mode (parameters moved
    inside it would become inference tensors that later training cannot use), in eval mode under
    ``torch.inference_mode()``; its training flag is restored after, even on an error."""
    was_training = model.training
    model.eval().to(device)
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


# ---- one planner for every window-training run -------------------------------------------------------------------
def use_checkpointing(settings: TrainSettings) -> bool:
    if settings.checkpoint_activations is not None:
        return settings.checkpoint_activations
    return settings.length >= CHECKPOINT_ACTIVATIONS_FROM


@dataclass
class WindowPlan:
    """A validated window-training run, ready for :func:`run_windows`; nothing has been written yet.

    ``summary``: the JSON-ready facts of the run (preset, shape, parameters, batch, lr, warm-up, validation).
    ``species``: the species of the training windows.
    """

    model: nn.Module
    task: ClassificationTask | LMTask
    datamodule: WindowData
    trainer: TrainerConfig
    val: WindowSet | None
    summary: dict
    species: list[str]


def plan_windows(store: TokenStore, settings: TrainSettings, build_model: Callable[[], nn.Module], *,
                 labelled: bool, task_class: Callable[..., nn.Module] | None = None) -> WindowPlan:
    """Build the model, its task and data for training on ``store``'s windows.

    Train windows are random and reverse-complemented with ``settings.rc_prob``; validation windows are fixed
    (:func:`validation_windows`). ``build_model()`` makes the model after the seed is set. ``labelled``: species
    classification (:class:`ClassificationTask`, batches carry ``label``; default lr: the preset's ``lr``), else
    next-base prediction (:class:`LMTask`, or ``task_class(model, optim)``, e.g. masked-LM; default lr:
    ``pretrain_lr``). The batch and lr defaults come from
    ``settings.preset``, else the preset of the model's shape, else "tiny". Raises DataError/UserError (e.g. a
    window longer than every record) before anything is written.
    """
    sampler = WindowSampler(store, "train", settings.length, max_n_fraction=settings.max_n_fraction,
                            rc_prob=settings.rc_prob, seed=settings.seed)
    sampler.check()  # e.g. a species made entirely of N: refused here, not after training has started
    val, val_note = validation_windows(store, settings)
    torch.manual_seed(settings.seed)
    model = build_model()
    model.gradient_checkpointing = use_checkpointing(settings)
    preset_name = settings.preset or preset_name_of(model.config)  # e.g. an --init-from model of a preset's shape
    preset = get_preset(preset_name or "tiny")
    batch = batch_size_for(preset, settings)
    lr = settings.lr or (preset.lr if labelled else preset.pretrain_lr)
    task_class = task_class or (ClassificationTask if labelled else LMTask)
    val_samples = [] if val is None else [
        {"input_ids": torch.from_numpy(t), **({"label": torch.tensor(y)} if labelled else {})} for t, y in val]
    datamodule = WindowData(WindowTokens(sampler, labels=labelled), batch, val_samples=val_samples,
                            num_workers=settings.num_workers)
    settings, step_seconds = resolve_max_steps(settings, lambda: task_class(model, OptimConfig(lr=lr)), datamodule)
    callbacks, warmup = warmup_callbacks(settings)
    task = task_class(model, optim_config(preset, settings, lr))
    summary = {"preset": preset_name or "pretrained (tiny's batch and lr)", "d_model": model.config.d_model,
               "n_layer": model.config.n_layer, "parameters": param_count(model), "batch_size": batch, "lr": lr,
               "sequence_length_warmup": warmup, "checkpoint_activations": model.gradient_checkpointing,
               "validation": val_note or f"{len(val)} windows of the val split",
               "max_steps": settings.max_steps, "max_minutes": settings.max_minutes}
    if step_seconds is not None:
        summary["measured_seconds_per_step"] = round(step_seconds, 4)
    return WindowPlan(model, task, datamodule, trainer_config(settings, callbacks, val is not None), val, summary,
                      sampler.species)


def resolve_max_steps(settings: TrainSettings, make_task: Callable[[], nn.Module],
                      datamodule: WindowData) -> tuple[TrainSettings, float | None]:
    """``settings`` with ``max_steps`` decided, and the measured seconds per step (None when not measured).

    Given steps are kept; without them a wall-clock budget is filled by the steps that fit it at the speed of
    ``make_task()`` measured on the training device (:func:`~mamba_bio_audio.training.budget.seconds_per_step`);
    otherwise :data:`DEFAULT_MAX_STEPS`.
    """
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.training.budget import planned_steps, seconds_per_step

    if settings.max_steps is not None:
        return settings, None
    if settings.max_minutes is None:
        return dataclasses.replace(settings, max_steps=DEFAULT_MAX_STEPS), None
    step_seconds = seconds_per_step(make_task(), datamodule, torch_device(settings.device),
                                    precision=None,  # DNA runs train at the trainer's default (trainer_config)
                                    accumulate=settings.accumulate)
    steps = planned_steps(60 * settings.max_minutes, step_seconds)
    return dataclasses.replace(settings, max_steps=steps), step_seconds


def run_windows(plan: WindowPlan, out: Path, resume: bool = False) -> dict:
    """Fit (or resume) ``plan``, save ``out/model``; returns the summary with ``train_seconds``, ``steps`` and
    ``stopped_by`` ("max_steps" or "max_minutes": whether the wall-clock budget cut the run)."""
    result = train_and_export(plan.task, plan.datamodule, out, plan.trainer, resume)
    return {**plan.summary, **result.metrics()}
