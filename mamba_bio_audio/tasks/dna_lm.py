"""Genome language-model pretraining (``mba dna pretrain``): a MambaLM learns to predict the next base, or (masked-LM,
``objective="mlm"``) a bidirectional Caduceus learns to fill in masked bases.

The run is planned by :func:`~mamba_bio_audio.tasks.windows.plan_windows` like a species run; it is scored by the
next-base cross-entropy on fixed validation windows (nats per base, perplexity, bits per base). Its saved model is
the starting point of ``mba species train --init-from``.

Packed pretraining (:func:`plan_packed_pretraining`, ``--pack``): each training row of ``length`` tokens holds
records of any length end to end (:class:`~mamba_bio_audio.data_prep.dna.packed_windows.PackedWindowSampler`),
numbered by ``seq_idx``; the model restarts its state at each record and
:func:`~mamba_bio_audio.training.module.next_token_loss` does not predict a record's first base from the one before
it. Validation then uses fixed packed rows of the val split.

Masked-LM pretraining (``objective="mlm"``, as Caduceus): a :class:`~mamba_bio_audio.models.caduceus.CaduceusLM` of
the preset's width and depth (BiMamba, RCPS by default) reads windows with 15% of the positions chosen and masked
(:mod:`~mamba_bio_audio.training.mlm`: 80/10/10) and is scored by the cross-entropy at the chosen positions; its
saved model loads with ``CaduceusLM.from_pretrained`` and is the starting point of ``species train --init-from``.
A causal model cannot learn it (it sees no base after the mask), a bidirectional one cannot learn next-base
prediction (it sees the base it predicts): both pairings are refused.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from mamba_bio_audio.data_prep.dna.packed_windows import PackedWindowSampler
from mamba_bio_audio.devices import torch_device
from mamba_bio_audio.errors import DataError, UserError
from mamba_bio_audio.tasks.windows import (
    TrainSettings,
    WindowData,
    WindowPlan,
    autocast,
    batch_size_for,
    batches,
    dna_extra,
    evaluating,
    get_preset,
    is_main_process,
    open_store,
    optim_config,
    param_count,
    plan_windows,
    resolve_max_steps,
    run_windows,
    trainer_config,
    use_checkpointing,
    warmup_callbacks,
)
from mamba_bio_audio.training.mlm import MLMTask, mask_generator, masked_lm_loss
from mamba_bio_audio.training.module import LMTask, OptimConfig, next_token_loss

LN2 = math.log(2.0)
OBJECTIVES = ("clm", "mlm")
MODEL_TYPES = ("mamba", "caduceus")
DEFAULT_MODEL_TYPE = {"clm": "mamba", "mlm": "caduceus"}


def check_objective(objective: str, model_type: str | None, pack: bool = False) -> str:
    """The model type of a pretraining run (``model_type``, or the objective's default); a UserError for a pairing
    that cannot learn: masked-LM with a causal MambaLM, next-base prediction with a bidirectional Caduceus, packed
    rows with a Caduceus."""
    if objective not in OBJECTIVES:
        raise UserError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    model_type = model_type or DEFAULT_MODEL_TYPE[objective]
    if model_type not in MODEL_TYPES:
        raise UserError(f"--model-type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    if objective == "mlm" and model_type == "mamba":
        raise UserError("--objective mlm needs a bidirectional model: a causal MambaLM sees no base after the mask "
                        "(use --model-type caduceus)")
    if objective == "clm" and model_type == "caduceus":
        raise UserError("--objective clm needs a causal model: a bidirectional Caduceus sees the base it predicts "
                        "(use --objective mlm)")
    if pack and model_type == "caduceus":
        raise UserError("--pack needs a MambaLM (a Caduceus cannot restart at each packed record)")
    return model_type


def plan_pretraining(store_path: str | os.PathLike, settings: TrainSettings, objective: str = "clm",
                     rcps: bool = True) -> WindowPlan:
    """Build the model of ``settings.preset`` (default "tiny"), its task and data on ``store_path``'s train windows:
    a MambaLM for next-base prediction (``objective`` "clm"), or a CaduceusLM of the preset's width and depth
    (RCPS unless ``rcps`` is False) for masked-LM (``objective`` "mlm"). Raises DataError/UserError before anything
    is written."""
    from mamba_bio_audio.models.caduceus import CaduceusLM, dna_caduceus_config
    from mamba_bio_audio.models.lm import MambaLM

    check_objective(objective, None)
    store = open_store(store_path)
    preset = get_preset(settings.preset or "tiny")
    if objective == "mlm":
        config = dna_caduceus_config(preset.d_model, preset.n_layer, rcps=rcps)
        plan = plan_windows(store, settings, lambda: CaduceusLM(config), labelled=False,
                            task_class=lambda model, optim: MLMTask(model, optim, seed=settings.seed))
        plan.summary.update(objective="mlm", model_type="caduceus", rcps=rcps)
    else:
        config = dataclasses.replace(preset.model_config(), extra=dna_extra(settings.length))
        plan = plan_windows(store, settings, lambda: MambaLM(config), labelled=False)
    plan.summary["species"] = plan.species
    return plan


class PackedWindowTokens:
    """``sample_fn(i)`` of a :class:`PackedWindowSampler`: ``{"input_ids": uint8 (length,), "seq_idx": int32
    (length,)}`` (picklable for DataLoader workers)."""

    def __init__(self, sampler: PackedWindowSampler):
        self.sampler = sampler

    def __call__(self, i: int) -> dict[str, torch.Tensor]:
        tokens, seq_idx = self.sampler[i]
        return {"input_ids": torch.from_numpy(tokens), "seq_idx": torch.from_numpy(seq_idx)}


class PackedLMTask(LMTask):
    """:class:`~mamba_bio_audio.training.module.LMTask` that also reads packed batches (``"seq_idx"``): the mean
    next-token cross-entropy over the predicted tokens (:func:`~mamba_bio_audio.training.module.next_token_loss`)."""

    def compute_loss(self, batch):
        if "seq_idx" not in batch:
            return super().compute_loss(batch)
        total, count = next_token_loss(self.model, batch["input_ids"], batch["seq_idx"])
        loss = total / count.clamp(min=1)
        return loss, {"bits_per_token": loss.detach() / LN2}


def plan_packed_pretraining(store_path: str | os.PathLike, settings: TrainSettings) -> WindowPlan:
    """:func:`plan_pretraining` with packed rows: each training row of ``settings.length`` tokens holds records of
    any length end to end (module docstring). Validation: ``val_per_species`` fixed packed rows per species of the
    val split (``plan.val``: a list of ``(tokens, seq_idx)``). Batch, learning rate, warm-up and budget as
    :func:`~mamba_bio_audio.tasks.windows.plan_windows`; nothing is written."""
    from mamba_bio_audio.models.lm import MambaLM

    store = open_store(store_path)
    sampler = PackedWindowSampler(store, "train", settings.length, max_n_fraction=settings.max_n_fraction,
                                  rc_prob=settings.rc_prob, seed=settings.seed)
    sampler.check()
    val, val_note = None, "--val-per-species 0"
    if settings.val_per_species:
        try:
            val_sampler = PackedWindowSampler(store, "val", settings.length, max_n_fraction=settings.max_n_fraction,
                                              seed=settings.seed + 1)
            val = val_sampler.rows(settings.val_per_species * len(val_sampler.species))
            val_note = f"{len(val)} packed rows of the val split"
        except DataError as e:
            val_note = str(e)
    torch.manual_seed(settings.seed)
    preset_name = settings.preset or "tiny"
    preset = get_preset(preset_name)
    model = MambaLM(dataclasses.replace(preset.model_config(), extra=dna_extra(settings.length)))
    model.gradient_checkpointing = use_checkpointing(settings)
    batch = batch_size_for(preset, settings)
    lr = settings.lr or preset.pretrain_lr
    val_samples = [{"input_ids": torch.from_numpy(t), "seq_idx": torch.from_numpy(s)} for t, s in val or []]
    datamodule = WindowData(PackedWindowTokens(sampler), batch, val_samples=val_samples,
                            num_workers=settings.num_workers)
    settings, step_seconds = resolve_max_steps(settings, lambda: PackedLMTask(model, OptimConfig(lr=lr)), datamodule)
    callbacks, warmup = warmup_callbacks(settings)
    task = PackedLMTask(model, optim_config(preset, settings, lr))
    summary = {"preset": preset_name, "d_model": model.config.d_model, "n_layer": model.config.n_layer,
               "parameters": param_count(model), "batch_size": batch, "lr": lr, "packed": True,
               "sequence_length_warmup": warmup, "checkpoint_activations": model.gradient_checkpointing,
               "validation": val_note, "max_steps": settings.max_steps, "max_minutes": settings.max_minutes,
               "species": sampler.species}
    if step_seconds is not None:
        summary["measured_seconds_per_step"] = round(step_seconds, 4)
    return WindowPlan(model, task, datamodule, trainer_config(settings, callbacks, val is not None), val, summary,
                      sampler.species)


def run_pretraining(plan: WindowPlan, out: Path, resume: bool = False, batch_size: int | None = None) -> dict:
    """Train, save ``out/model``, and return the metrics: val loss (nats per base), perplexity, bits per base."""
    metrics = run_windows(plan, out, resume)
    if not is_main_process():  # the other processes of a multi-device run: their scores would go unused
        return metrics
    if plan.val is not None:  # Lightning hands the model back on the CPU: evaluate on the training device
        device = torch_device(plan.trainer.device)
        if plan.summary.get("objective") == "mlm":
            metrics.update(masked_lm_eval(plan.model, (t for t, _ in plan.val), batch_size, device,
                                          seed=plan.task.seed))
        elif plan.summary.get("packed"):
            metrics.update(lm_loss(plan.model, (t for t, _ in plan.val), batch_size, device,
                                   seq_idx=(s for _, s in plan.val)))
        else:
            metrics.update(lm_loss(plan.model, (t for t, _ in plan.val), batch_size, device))
    return metrics


def lm_loss(model: nn.Module, windows: Iterable[np.ndarray], batch_size: int | None = None,
            device: torch.device | str = "cpu", seq_idx: Iterable[np.ndarray] | None = None) -> dict:
    """Next-base cross-entropy of ``model`` over windows (each ``(seqlen,)`` token ids; the model reads the first
    ``seqlen - 1`` and predicts the last ``seqlen - 1``). ``seq_idx``: one ``(seqlen,)`` array per window for
    packed rows (:func:`~mamba_bio_audio.training.module.next_token_loss`: a sequence's first token is not predicted).

    Returns ``{"val_loss": nats per base, "val_perplexity": exp(loss), "val_bits_per_base": loss / ln 2,
    "val_tokens": predicted bases}``.
    """
    device = torch.device(device)
    total, count = 0.0, 0
    seq_batches = batches(seq_idx, batch_size) if seq_idx is not None else None
    with evaluating(model, device):
        for batch in batches(windows, batch_size):
            ids = torch.from_numpy(batch).to(device).long()
            seq = None if seq_batches is None else torch.from_numpy(next(seq_batches)).to(device)
            with autocast(device):
                batch_total, batch_count = next_token_loss(model, ids, seq)
            total += batch_total.item()
            count += int(batch_count)
    if count == 0:
        raise UserError("no windows to evaluate")
    loss = total / count
    return {"val_loss": loss, "val_perplexity": math.exp(loss), "val_bits_per_base": loss / LN2,
            "val_tokens": count}


def masked_lm_eval(model: nn.Module, windows: Iterable[np.ndarray], batch_size: int | None = None,
                   device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """Masked-LM cross-entropy of ``model`` over windows (each ``(seqlen,)`` token ids), 15% of the positions of each
    batch masked (:func:`~mamba_bio_audio.training.mlm.mask_tokens`; batch ``b``'s masks from seed ``seed + b``).

    Returns ``{"val_loss": nats per masked base, "val_perplexity", "val_bits_per_base", "val_tokens": masked
    bases}``.
    """
    device = torch.device(device)
    total, count = 0.0, 0
    with evaluating(model, device):
        for b, batch in enumerate(batches(windows, batch_size)):
            ids = torch.from_numpy(batch).to(device).long()
            with autocast(device):
                batch_total, batch_count = masked_lm_loss(model, ids, mask_generator(device, seed + b))
            total += batch_total.item()
            count += int(batch_count)
    if count == 0:
        raise UserError("no masked bases to evaluate (windows too few or too short)")
    loss = total / count
    return {"val_loss": loss, "val_perplexity": math.exp(loss), "val_bits_per_base": loss / LN2, "val_tokens": count}
