"""Classification of the user's own labelled DNA sequences: the library behind ``mba dna classify``.

- preparing: :func:`prepare` reads CSV/TSV, labelled FASTA, Genomic Benchmarks or Nucleotide Transformer task files
  (:mod:`~mamba_bio_audio.data_prep.dna.labelled`) into a token store, one entry per sequence with its label and
  split;
- training: :func:`plan_training` validates a run and builds it (nothing written), :func:`run_training` fits it
  with the project's Lightning training (:class:`~mamba_bio_audio.training.module.ClassificationTask`, class
  weights optional). Sequences of mixed lengths share a batch: length buckets
  (:mod:`~mamba_bio_audio.data_prep.dna.buckets`) keep the padding small, and the attention mask makes a padded
  sequence get the logits it gets alone (:class:`~mamba_bio_audio.models.classifier.MambaClassifier`). With
  ``pack`` the train sequences are packed instead, many per row up to a token budget
  (:mod:`~mamba_bio_audio.data_prep.dna.packing`), and the classifier pools each one on its own: no compute on pads;
- evaluation: :func:`evaluate` scores a split (accuracy, MCC, macro-F1, AUROC when binary, confusion matrix) beside
  the k-mer baseline (6-mer frequencies + logistic regression fit on the train split); padded batches, or packed
  rows (:func:`predict_proba` ``packed=True``: the same probabilities);
- prediction: :func:`predict_file` writes class probabilities of every sequence of a file as TSV, streaming.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mamba_bio_audio.checkpoint import CONFIG_NAME
from mamba_bio_audio.config import MambaConfig
from mamba_bio_audio.data_prep.dna.buckets import BucketedSampler, eval_batches, pad_batch
from mamba_bio_audio.data_prep.dna.labelled import (
    LabelledSequence,
    download_genomic_benchmark,
    read_labelled,
    write_labelled_store,
)
from mamba_bio_audio.data_prep.dna.packing import PackedSampler, collate_packed, join_row, pack_rows
from mamba_bio_audio.data_prep.dna.tokenizer import reverse_complement
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.errors import DataError, UserError
from mamba_bio_audio.metrics.classification import classification_metrics
from mamba_bio_audio.models.classifier import MambaClassifier
from mamba_bio_audio.tasks.baselines import BASELINE_K, BASELINE_L2, BASELINE_NAME, kmer_baseline
from mamba_bio_audio.tasks.species import (
    build_classifier,
    classifier_from_record,
    copy_backbone,
    has_bases,
    recorded_head,
    resolve_architecture,
)
from mamba_bio_audio.tasks.windows import (
    TrainSettings,
    WindowData,
    autocast,
    batch_size_for,
    check_dna_config,
    dna_extra,
    evaluating,
    get_preset,
    model_dir,
    optim_config,
    param_count,
    preset_name_of,
    resolve_max_steps,
    train_and_export,
    trainer_config,
    use_checkpointing,
)
from mamba_bio_audio.training.module import ClassificationTask, OptimConfig
from mamba_bio_audio.training.trainer import TrainerConfig

EVAL_MAX_TOKENS = 2**18  # padded tokens per evaluation batch
MIN_PACK_LENGTH = 8  # the shortest --pack-length: a row must hold more than a few bases (and the conv kernel)
BASELINE_MAX_TRAIN = 20_000  # train sequences the k-mer baseline fits on at most (a seeded subset beyond)


# ---- prepare ------------------------------------------------------------------------------------------------------
def prepare(source: str | os.PathLike | None, out: str | os.PathLike, *, fmt: str = "auto",
            download: str | None = None, download_dir: str | os.PathLike | None = None,
            val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, lenient: bool = False,
            **columns) -> TokenStore:
    """Labelled sequences of ``source`` (or the Genomic Benchmarks set ``download``) -> the token store ``out``.

    ``columns``: ``sequence_column``, ``label_column``, ``split_column``, ``id_column``, ``label_key`` of
    :func:`~mamba_bio_audio.data_prep.dna.labelled.read_labelled`. Splits as in
    :func:`~mamba_bio_audio.data_prep.dna.labelled.write_labelled_store`.
    """
    if (source is None) == (download is None):
        raise UserError("give an input file or folder, or --download NAME (not both)")
    if download is not None:
        folder = Path(download_dir or Path.home() / ".genomic_benchmarks")
        source, fmt = download_genomic_benchmark(download, folder), "genomic-benchmarks"
    sequences = read_labelled(source, fmt, lenient=lenient, **columns)
    write_labelled_store(sequences, out, source=str(source), val_fraction=val_fraction, test_fraction=test_fraction,
                         seed=seed, lenient=lenient)
    return TokenStore(out)


def open_labelled_store(path: str | os.PathLike) -> TokenStore:
    store = TokenStore(path)  # not open_store: that one takes genome stores only
    if store.meta.get("domain") != "dna" or store.meta.get("task") != "classify":
        raise DataError(f"{store.path}: not a store of labelled sequences (made by 'mba dna classify prepare')")
    return store


def split_summary(store: TokenStore) -> str:
    """One line per split: sequences per label."""
    return "\n".join(f"{split}: " + ", ".join(f"{label} {n:,}" for label, n in sorted(counts.items()))
                     for split, counts in store.meta["counts"].items())


# ---- models -------------------------------------------------------------------------------------------------------
def build_model(labels: Sequence[str], window: int, preset: str | None, bidirectional: bool, pooling: str,
                init_from: str | os.PathLike | None) -> MambaClassifier:
    """A fresh classifier over ``labels``; ``init_from`` a ``mba dna pretrain`` run (its LM backbone) or a trained
    classifier (``mba species train`` or ``classify train``: its backbone; the head is new), or a Caduceus model
    (a CaduceusClassifier: :mod:`~mamba_bio_audio.tasks.caduceus_init`)."""
    from mamba_bio_audio.tasks.caduceus_init import caduceus_folder

    if init_from is not None and caduceus_folder(init_from) is not None:
        return build_classifier(labels, window, preset, bidirectional, init_from, pooling)
    if init_from is None or "classifier" not in _saved_config(init_from).extra:
        return build_classifier(labels, window, preset, bidirectional, init_from, pooling)
    folder = model_dir(init_from)
    donor = MambaClassifier.from_pretrained(folder)
    check_dna_config(donor.config, folder)
    config = donor.config if preset is None else get_preset(preset).model_config()
    config = dataclasses.replace(config, bidirectional=bidirectional, extra=dna_extra(window))
    model = MambaClassifier(config, num_classes=len(labels), pooling=pooling, labels=list(labels))
    copy_backbone(donor, model, folder)
    return model


def _saved_config(path: str | os.PathLike) -> MambaConfig:
    folder = model_dir(path)
    return MambaConfig.load(folder / CONFIG_NAME)


def class_weights(counts: dict[str, int], labels: Sequence[str]) -> list[float]:
    """Inverse-frequency weights ``n / (C * n_c)`` (mean 1 over the sequences), one per label."""
    n = np.array([counts.get(label, 0) for label in labels], dtype=np.float64)
    return (n.sum() / (len(labels) * np.maximum(n, 1))).tolist()


class WeightedClassificationTask(ClassificationTask):
    """:class:`ClassificationTask` whose cross-entropy weighs class c by ``weights[c]`` (None: unweighted)."""

    def __init__(self, model: MambaClassifier, optim: OptimConfig, weights: Sequence[float] | None = None):
        super().__init__(model, optim)
        self.register_buffer("class_weight", None if weights is None else torch.tensor(weights), persistent=False)

    def compute_loss(self, batch):
        """Padded batches, or packed ones (``seq_idx``; one label per packed sequence, in order)."""
        seq_idx = batch.get("seq_idx")
        if self.class_weight is None and seq_idx is None:
            return super().compute_loss(batch)
        if seq_idx is None:
            logits = self.model(batch["input_ids"], batch.get("attention_mask"))
        else:
            logits = self.model(batch["input_ids"], batch.get("attention_mask"), seq_idx=seq_idx)
        weight = None if self.class_weight is None else self.class_weight.float()
        loss = F.cross_entropy(logits.float(), batch["label"], weight=weight)
        accuracy = (logits.argmax(-1) == batch["label"]).float().mean()
        return loss, {"accuracy": accuracy}


# ---- training -----------------------------------------------------------------------------------------------------
@dataclass
class ClassifySettings(TrainSettings):
    """:class:`~mamba_bio_audio.tasks.windows.TrainSettings` for whole sequences: ``length`` is the crop (a longer
    training sequence gives a random window of it; 0: no crop), ``rc_prob`` defaults to 0 (labels may depend on
    the strand), plus ``bidirectional``, ``pooling``, ``init_from`` and inverse-frequency ``class_weights``.
    ``pack``: train on packed rows of ``pack_length`` tokens (0: the longest training sequence, after the crop),
    as many rows per step as hold ``batch_size`` sequences of the mean length; a ``pack_length`` shorter than the
    longest training sequence is the crop when ``length`` is 0 (:meth:`crop`). ``bidirectional`` and ``pooling``
    None: not given (a fresh model's default, or the ``init_from`` model's: :func:`~mamba_bio_audio.tasks.species.
    resolve_architecture`)."""

    length: int = 0
    rc_prob: float = 0.0
    bidirectional: bool | None = None
    pooling: str | None = None
    init_from: str | None = None
    class_weights: bool = False
    pack: bool = False
    pack_length: int = 0

    def __post_init__(self) -> None:
        if self.length:
            super().__post_init__()
        else:  # no crop: TrainSettings' checks of the other fields (a copy with a valid length runs them)
            dataclasses.replace(self, length=2)
        if self.pack and 0 < self.pack_length < MIN_PACK_LENGTH:
            raise UserError(f"--pack-length {self.pack_length} is too short: a packed row holds at least "
                            f"{MIN_PACK_LENGTH} bases (0: the longest train sequence)")
        if self.pack and self.pack_length and self.length and self.pack_length < self.length:
            raise UserError(f"--pack-length {self.pack_length} must hold a --max-length {self.length} window")

    def crop(self, longest: int) -> int | None:
        """The crop training uses, given the ``longest`` train sequence: ``length`` (--max-length), else with
        ``pack`` a ``pack_length`` shorter than ``longest`` (a packed row cannot hold more), else None (whole
        sequences). Evaluation and prediction read the centre of this many bases (recorded in the model)."""
        if self.length:
            return self.length
        if self.pack and 0 < self.pack_length < longest:
            return self.pack_length
        return None


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Training items (uint8 ``input_ids`` of any lengths, ``label``) -> a right-padded batch with its mask."""
    ids, mask = pad_batch([item["input_ids"] for item in items])
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "label": torch.tensor([item["label"] for item in items], dtype=torch.long)}


class SequenceItems:
    """``sample_fn(i)`` of a :class:`BucketedSampler` (numpy items; :func:`collate` makes the tensors)."""

    def __init__(self, sampler: BucketedSampler):
        self.sampler = sampler

    def __call__(self, i: int) -> dict:
        tokens, label = self.sampler[i]
        return {"input_ids": tokens, "label": label}


class SequenceData(WindowData):
    """Training batches of :func:`collate` (bucketed, padded, masked) or, with ``packed``, of
    :func:`~mamba_bio_audio.data_prep.dna.packing.collate_packed` (``batch_size`` rows); validation batches given
    ready-made."""

    def __init__(self, *args, packed: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.collate = collate_packed if packed else collate

    def train_dataloader(self) -> DataLoader:
        loader = super().train_dataloader()
        return DataLoader(loader.dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=self.collate, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | list:
        return DataLoader(self.val_samples, batch_size=None) if self.val_samples else []


@dataclass
class ClassifyPlan:
    """A validated classification run, ready for :func:`run_training`; nothing has been written yet."""

    model: MambaClassifier
    task: WeightedClassificationTask
    datamodule: SequenceData
    trainer: TrainerConfig
    store: TokenStore
    val: list[int]
    summary: dict


def plan_training(store_path: str | os.PathLike, settings: ClassifySettings,
                  architecture: dict | None = None) -> ClassifyPlan:
    """Build the classifier, its task and data: bucketed train sequences, fixed validation batches.

    ``architecture``: a resumed run's record (:func:`~mamba_bio_audio.tasks.species.recorded_architecture`): the
    classifier is built from it, not from ``settings.init_from``, which is then neither read nor needed (it stays
    in the summary: metrics.json keeps naming the donor)."""
    store = open_labelled_store(store_path)
    labels = list(store.meta["labels"])
    class_of = {label: c for c, label in enumerate(labels)}
    train = [i for i, r in enumerate(store.records) if r["split"] == "train"]
    val = [i for i, r in enumerate(store.records) if r["split"] == "val"]
    if not train:
        raise DataError(f"{store.path}: no sequences in the train split (a test-only store is for 'mba dna classify "
                        f"evaluate')")
    longest = max(store.records[i]["length"] for i in train)
    crop = settings.crop(longest)
    window = min(crop or longest, longest)
    if architecture is None:
        bidirectional, pooling = resolve_architecture(settings.init_from, settings.bidirectional, settings.pooling)
    else:
        bidirectional, pooling = recorded_head(architecture, settings.bidirectional, settings.pooling)
    settings = dataclasses.replace(settings, bidirectional=bidirectional, pooling=pooling)
    sized = dataclasses.replace(settings, length=max(2, window))  # batch and checkpointing defaults by length
    torch.manual_seed(settings.seed)
    if architecture is None:
        model = build_model(labels, window, settings.preset, bidirectional, pooling, settings.init_from)
    else:
        model = classifier_from_record(architecture, labels, window, bidirectional, pooling)
    model.config.extra["dna"] = {**model.config.extra.get("dna", {}), "crop": crop}  # evaluation reads it
    if settings.pack and not isinstance(model, MambaClassifier):
        raise UserError("--pack needs a Mamba classifier (a Caduceus does not read packed rows)")
    model.gradient_checkpointing = use_checkpointing(sized)
    preset_name = settings.preset or preset_name_of(model.config)
    preset = get_preset(preset_name or "tiny")
    batch_length = _batch_length(store, train, window, settings.pack)
    batch = batch_size_for(preset, dataclasses.replace(sized, length=batch_length))
    lr = settings.lr or preset.lr
    weights = class_weights(store.meta["counts"]["train"], labels) if settings.class_weights else None
    train_classes = [class_of[store.records[i]["label"]] for i in train]
    val_batches = list(_batches(store, val, [class_of[store.records[i]["label"]] for i in val], batch, crop))
    packing = None
    if settings.pack:
        sampler, rows, packing = _packed_sampler(store, train, train_classes, batch, window, crop, settings)
        datamodule = SequenceData(sampler, rows, val_samples=[b for _, b in val_batches],
                                  num_workers=settings.num_workers, packed=True)
    else:
        sampler = BucketedSampler(store, train, train_classes, batch, seed=settings.seed, crop=crop,
                                  rc_prob=settings.rc_prob)
        datamodule = SequenceData(SequenceItems(sampler), batch, val_samples=[b for _, b in val_batches],
                                  num_workers=settings.num_workers)
    settings, step_seconds = resolve_max_steps(
        settings, lambda: WeightedClassificationTask(model, OptimConfig(lr=lr), weights), datamodule)
    sized = dataclasses.replace(sized, max_steps=settings.max_steps)
    task = WeightedClassificationTask(model, optim_config(preset, settings, lr), weights)
    summary = {"preset": preset_name or "pretrained (tiny's batch and lr)", "d_model": model.config.d_model,
               "n_layer": model.config.n_layer, "parameters": param_count(model), "batch_size": batch, "lr": lr,
               "batch_planned_for_length": batch_length,
               "labels": labels, "train_sequences": len(train), "longest_train_sequence": longest, "crop": crop,
               "init_from": settings.init_from, "bidirectional": settings.bidirectional, "pooling": settings.pooling,
               "class_weights": weights, "rc_prob": settings.rc_prob, "packing": packing,
               "checkpoint_activations": model.gradient_checkpointing,
               "validation": f"{len(val)} sequences of the val split" if val else "none (the store has no val split)",
               "max_steps": settings.max_steps, "max_minutes": settings.max_minutes}
    if step_seconds is not None:
        summary["measured_seconds_per_step"] = round(step_seconds, 4)
    return ClassifyPlan(model, task, datamodule, trainer_config(sized, [], bool(val)), store, val, summary)


def _batch_length(store: TokenStore, train: Sequence[int], window: int, pack: bool) -> int:
    """The sequence length the default batch size is planned for (the preset's token budget over it): padded
    batches, ``window`` (the longest cut train sequence: a bucket of the longest ones must fit the budget, so one
    long sequence makes every batch small; ``--pack`` or ``--max-length`` avoid that); packed rows, the mean cut
    length (a step's rows hold about batch x mean tokens, one long sequence only widens the rows)."""
    if not pack:
        return max(2, window)
    lengths = np.minimum([store.records[i]["length"] for i in train], window)
    return max(2, int(np.ceil(lengths.mean())))


def _packed_sampler(store: TokenStore, train: Sequence[int], classes: Sequence[int], batch: int, window: int,
                    crop: int | None, settings: ClassifySettings) -> tuple[PackedSampler, int, dict]:
    """The packed training stream: rows of ``settings.pack_length`` tokens (0: ``window``, the longest cut train
    sequence) holding sequences cut to ``crop`` (:meth:`ClassifySettings.crop`), and rows per step (as many as hold
    ``batch`` sequences of the mean length); plus its summary."""
    width = settings.pack_length or window
    sampler = PackedSampler(store, train, classes, width, seed=settings.seed, crop=crop, rc_prob=settings.rc_prob)
    rows = max(1, round(batch * float(sampler.lengths.mean()) / width))
    fill = sampler.fill()
    return sampler, rows, {"row_tokens": width, "rows_per_step": rows, "fill": round(fill, 4),
                           "sequences_per_step": round(rows * fill * width / float(sampler.lengths.mean()), 1)}


def _batches(store: TokenStore, indices: Sequence[int], classes: Sequence[int] | None, batch_size: int,
             crop: int | None = None) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(positions into ``indices``, padded batch) over ``indices`` by length; a sequence longer than ``crop`` gives
    its centre ``crop`` tokens."""
    lengths = [store.records[i]["length"] for i in indices]
    for rows in eval_batches(lengths, batch_size, EVAL_MAX_TOKENS):
        tokens = [_centre(store.tokens(indices[r]), crop) for r in rows]
        ids, mask = pad_batch(tokens)
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if classes is not None:
            batch["label"] = torch.tensor([classes[r] for r in rows], dtype=torch.long)
        yield rows, batch


def _centre(tokens: np.ndarray, crop: int | None) -> np.ndarray:
    if crop is None or tokens.size <= crop:
        return tokens
    start = (tokens.size - crop) // 2
    return tokens[start: start + crop]


def run_training(plan: ClassifyPlan, out: Path, resume: bool = False) -> dict:
    """Fit, save ``out/model``, and return the summary with the validation metrics (if there is a val split)."""
    result = train_and_export(plan.task, plan.datamodule, out, plan.trainer, resume)
    metrics = {**plan.summary, **result.metrics()}
    if plan.val:
        from mamba_bio_audio.devices import torch_device

        probs = predict_proba(plan.model, [plan.store.tokens(i) for i in plan.val],
                              device=torch_device(plan.trainer.device), crop=plan.summary["crop"])
        labels = plan.summary["labels"]
        y = np.array([labels.index(plan.store.records[i]["label"]) for i in plan.val])
        metrics["val"] = split_metrics(y, probs, labels)
    return metrics


# ---- inference ----------------------------------------------------------------------------------------------------
def predict_proba(model: MambaClassifier, sequences: Sequence[np.ndarray], batch_size: int = 64,
                  device: torch.device | str = "cpu", crop: int | None = None, packed: bool = False,
                  rc_average: bool = False) -> np.ndarray:
    """Class probabilities ``(n, num_classes)`` float64 of token sequences of any lengths, batched by length with
    padding and masks (bf16 autocast on CUDA); a sequence longer than ``crop`` is read at its centre. ``packed``:
    the sequences packed into rows instead (:func:`_predict_packed`), the same probabilities. ``rc_average``: the
    mean of each sequence's probabilities and those of its reverse complement (the same bases read from the other
    strand; for labels that do not depend on the strand)."""
    if rc_average:
        forward = predict_proba(model, sequences, batch_size, device, crop, packed)
        flipped = [reverse_complement(_centre(s, crop)) for s in sequences]
        return (forward + predict_proba(model, flipped, batch_size, device, None, packed)) / 2
    device = torch.device(device)
    with evaluating(model, device):
        if packed:
            return _predict_packed(model, [_centre(s, crop) for s in sequences], batch_size, device)
        out = np.zeros((len(sequences), model.num_classes))
        lengths = [min(s.size, crop or s.size) for s in sequences]
        for rows in eval_batches(lengths, batch_size, EVAL_MAX_TOKENS):
            ids, mask = pad_batch([_centre(sequences[r], crop) for r in rows])
            with autocast(device):
                logits = model(torch.from_numpy(ids).to(device).long(), torch.from_numpy(mask).to(device))
            out[rows] = torch.softmax(logits.double(), dim=-1).cpu().numpy()
    return out


def _predict_packed(model: MambaClassifier, sequences: Sequence[np.ndarray], batch_size: int,
                    device: torch.device) -> np.ndarray:
    """Probabilities of ``sequences`` packed (first-fit decreasing) into rows of ``EVAL_MAX_TOKENS // batch_size``
    tokens (at least the longest sequence), at most ``EVAL_MAX_TOKENS`` row tokens per batch."""
    out = np.zeros((len(sequences), model.num_classes))
    rows, width = pack_rows(sequences, EVAL_MAX_TOKENS // batch_size)
    per_batch = max(1, EVAL_MAX_TOKENS // width)
    for first in range(0, len(rows), per_batch):
        group = rows[first: first + per_batch]
        batch = collate_packed([join_row([sequences[k] for k in row], [0] * len(row)) for row in group])
        with autocast(device):
            logits = model(batch["input_ids"].to(device).long(), batch["attention_mask"].to(device),
                           seq_idx=batch["seq_idx"].to(device))
        order = [k for row in group for k in row]
        out[order] = torch.softmax(logits.double(), dim=-1).cpu().numpy()
    return out


def model_crop(model: MambaClassifier) -> int | None:
    """The crop the model was trained with (its recorded window when sequences were cropped), else None."""
    return model.config.extra.get("dna", {}).get("crop")


# ---- evaluation ---------------------------------------------------------------------------------------------------
def evaluate(model: MambaClassifier, store_path: str | os.PathLike, *, split: str = "test", batch_size: int = 64,
             device: torch.device | str = "cpu", baseline: bool = True, baseline_max_train: int = BASELINE_MAX_TRAIN,
             seed: int = 0, rc_average: bool = False) -> dict:
    """Metrics of ``model`` on every sequence of ``split``, beside the k-mer baseline fit on the train split.

    A model trained with a crop (:func:`model_crop`) reads the centre ``crop`` bases of a longer sequence; the
    baseline then reads the same: it is fit on the centre crop of each train sequence and scores the centre crop of
    each ``split`` sequence (like for like; ``crop`` None: whole sequences for both). ``rc_average``: both score
    each sequence as the mean of its and its reverse complement's probabilities (:func:`predict_proba`).

    Returns a JSON-ready dict: ``split``, ``labels`` (the model's; confusion matrices in this order), ``n``,
    ``majority`` (the share of the most common class: what a constant guess scores), ``crop``, ``model`` and
    ``baseline`` (:func:`split_metrics` each) and the baseline's set-up (with the ``crop`` it read).
    """
    store = open_labelled_store(store_path)
    labels = list(model.labels)
    unknown = sorted(set(store.meta["labels"]) - set(labels))
    if unknown:
        raise DataError(f"{store.path}: labels {', '.join(unknown)} unknown to the model (it knows "
                        f"{', '.join(labels)})")
    indices = [i for i, r in enumerate(store.records) if r["split"] == split]
    if not indices:
        raise DataError(f"{store.path}: no sequences in the {split} split (it has "
                        f"{', '.join(store.meta['counts'])})")
    y = np.array([labels.index(store.records[i]["label"]) for i in indices])
    sequences = [store.tokens(i) for i in indices]
    crop = model_crop(model)
    probs = predict_proba(model, sequences, batch_size, device, crop=crop, rc_average=rc_average)
    result = {"split": split, "labels": labels, "n": len(indices),
              "majority": float(np.bincount(y, minlength=len(labels)).max() / len(y)), "crop": crop,
              "rc_average": rc_average, "model": split_metrics(y, probs, labels)}
    train = [i for i, r in enumerate(store.records) if r["split"] == "train"]
    if baseline and train:  # a test-only store has nothing to fit the baseline on
        if len(train) > baseline_max_train:
            train = sorted(np.random.default_rng(seed).choice(train, baseline_max_train, replace=False).tolist())
        train_y = np.array([labels.index(store.records[i]["label"]) for i in train])
        read = [_centre(s, crop) for s in sequences]
        if rc_average:  # one fit scores both strands: the first half of the rows, then their reverse complements
            read += [reverse_complement(s) for s in read]
        base = kmer_baseline(((_centre(store.tokens(i), crop), None) for i in train), train_y,
                             ((s, None) for s in read), len(labels))
        if rc_average:
            base = (base[:len(sequences)] + base[len(sequences):]) / 2
        result["baseline"] = {**split_metrics(y, base, labels), "name": BASELINE_NAME, "k": BASELINE_K,
                              "l2": BASELINE_L2, "train_sequences": len(train), "crop": crop,
                              "rc_average": rc_average}
    return result


def split_metrics(y: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> dict:
    """:func:`~mamba_bio_audio.metrics.classification.classification_metrics` of a split, except that a split whose
    sequences all have one label gets ``mcc`` and ``auroc`` None (JSON null) and a ``note`` saying why: neither is
    defined without a second class (the formulas would give 0 and NaN, numbers that read as results)."""
    result = classification_metrics(y, probs)
    present = np.unique(y)
    if present.size == 1:
        result["mcc"] = None
        if "auroc" in result:
            result["auroc"] = None
        result["note"] = (f"every sequence of the split has label {labels[int(present[0])]}: MCC"
                          f"{' and AUROC are' if 'auroc' in result else ' is'} undefined with one class (null)")
    return result


def results_table(result: dict) -> str:
    """Plain-text table: the model and the baseline, one row each (``n/a`` for an undefined metric)."""
    keys = ["accuracy", "mcc", "macro_f1"] + (["auroc"] if "auroc" in result["model"] else [])
    lines = [f"{'':<10}" + "".join(f"{k:>10}" for k in keys)]
    for name in ("model", "baseline"):
        if name in result:
            lines.append(f"{'mamba' if name == 'model' else '6-mer LR':<10}"
                         + "".join(f"{_cell(result[name][k]):>10}" for k in keys))
    strands = "; both strands averaged" if result.get("rc_average") else ""
    lines.append(f"({result['n']} sequences of the {result['split']} split; majority class {result['majority']:.3f}"
                 f"{strands})")
    if "note" in result["model"]:
        lines.append(f"({result['model']['note']})")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


# ---- prediction ---------------------------------------------------------------------------------------------------
def predict_file(model: MambaClassifier, source: str | os.PathLike, out: str | os.PathLike, *, fmt: str = "auto",
                 batch_size: int = 64, device: torch.device | str = "cpu", chunk: int = 4096,
                 lenient: bool = False, no_bases: list[str] | None = None, rc_average: bool = False,
                 **columns) -> int:
    """Write ``out`` (TSV): ``id, length, [bases_read,] [label,] predicted, p_<label>...`` per sequence of
    ``source``, in file order, reading ``chunk`` sequences at a time; labels in the input are optional. Returns the
    row count.

    ``length`` is the sequence's length; ``bases_read`` (only for a model trained with a crop, :func:`model_crop`)
    the bases the model read: the centre ``min(length, crop)``. The ``label`` column is there when any sequence of
    the file has a label (an unlabelled one then has an empty cell): whether it is, is known only at the end, so
    the rows go to a temporary file first and are copied behind the header. Every row has the header's columns
    (tabs and line breaks in ids and labels become spaces). A sequence without a single A/C/G/T base (all N) says
    nothing to the model: its ``predicted`` is empty and its probabilities ``nan``, and its id is appended to
    ``no_bases`` when given. ``rc_average``: as :func:`predict_proba`'s (both strands)."""
    out = Path(out)
    tmp, body = out.with_name(f".{out.name}.tmp"), out.with_name(f".{out.name}.rows.tmp")
    labels = list(model.labels)
    crop = model_crop(model)
    rows, with_label = 0, False
    try:
        with open(body, "w") as f:  # every row with a label cell (maybe empty); dropped below when all are
            for group in _chunks(read_labelled(source, fmt, lenient=lenient, require_labels=False, **columns), chunk):
                probs = predict_proba(model, [s.tokens for s in group], batch_size, device, crop=crop,
                                      rc_average=rc_average)
                for s, p in zip(group, probs):
                    read = [str(min(s.tokens.size, crop))] if crop else []
                    predicted = labels[int(p.argmax())]
                    if not has_bases(s.tokens):
                        predicted, p = "", np.full_like(p, np.nan)
                        if no_bases is not None:
                            no_bases.append(s.id)
                    f.write("\t".join([_cell_text(s.id), str(s.tokens.size), *read, _cell_text(s.label or ""),
                                       predicted, *(f"{x:.6f}" for x in p)]) + "\n")
                    with_label = with_label or s.label is not None
                rows += len(group)
        if rows == 0:
            raise DataError(f"{source}: no sequences")
        label_at = 3 if crop else 2  # the label cell's column
        with open(body) as rows_in, open(tmp, "w") as f:
            f.write("\t".join(["id", "length", *(["bases_read"] if crop else []), *(["label"] if with_label else []),
                               "predicted", *(f"p_{c}" for c in labels)]) + "\n")
            for line in rows_in:
                if not with_label:
                    cells = line.split("\t")
                    line = "\t".join(cells[:label_at] + cells[label_at + 1:])
                f.write(line)
        os.replace(tmp, out)
    finally:
        for path in (tmp, body):
            if path.exists():
                path.unlink()
    return rows


def _cell_text(text: str) -> str:
    """``text`` for one TSV cell: tabs and line breaks become spaces."""
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _chunks(items: Iterator[LabelledSequence], size: int) -> Iterator[list[LabelledSequence]]:
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
