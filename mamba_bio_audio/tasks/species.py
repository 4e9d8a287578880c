"""Species classification of DNA windows: the library behind ``mba species`` and ``mba demo``.

A :class:`~mamba_bio_audio.models.classifier.MambaClassifier` reads a window of token ids ``(batch, seqlen)`` and
returns species logits ``(batch, num_species)`` from the mean of its hidden states over the window (or, with
``pooling="last"``, the last token's, the head of the Mamba paper's Great Apes task). The species names travel in
the saved model's config (``config.extra["classifier"]["labels"]``) with the window length it is meant for
(``config.extra["dna"]["window"]``).

Defaults, from the A/B on held-out strains of five bacteria (``results/dna/ab.md``): the ``paper-1.4m`` preset,
mean pooling, lr 1e-3, and training on windows of at most :data:`DEFAULT_TRAIN_LENGTH` bases whatever the window
the model is meant for (a mean-pooled model reads any length; many short windows taught it far more in the same
GPU time than few long ones).

- training: :func:`plan_training` validates a run and builds it (nothing written), :func:`run_training` fits it;
- evaluation: :func:`evaluate_lengths` scores a model on the same fixed windows (:func:`~mamba_bio_audio.data_prep.
  dna.windows.eval_windows`) at each length, beside a k-mer frequency + logistic-regression baseline trained on
  train-split windows of that length
  (:func:`~mamba_bio_audio.tasks.baselines.kmer_baseline`); :func:`plot_accuracy_vs_length` draws the result;
- prediction: :func:`predict_records` gives species probabilities per FASTA record or per window.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mamba_bio_audio.checkpoint import load_backbone_weights
from mamba_bio_audio.data_prep.dna.tokenizer import count_unknown, reverse_complement
from mamba_bio_audio.data_prep.dna.windows import WindowSampler, eval_windows
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.devices import process_device, torch_device
from mamba_bio_audio.errors import CheckpointError, DataError, UserError
from mamba_bio_audio.files import atomic_write_text, pyplot, save_figure
from mamba_bio_audio.models.classifier import MambaClassifier
from mamba_bio_audio.tasks.baselines import BASELINE_K, BASELINE_L2, BASELINE_NAME, kmer_baseline
from mamba_bio_audio.tasks.windows import (
    TrainSettings,
    WindowPlan,
    autocast,
    batches,
    check_dna_config,
    dna_extra,
    evaluating,
    get_preset,
    is_main_process,
    model_dir,
    open_store,
    plan_windows,
    run_windows,
)

DEFAULT_PRESET = "paper-1.4m"  # a species run's model size without --preset or --init-from
DEFAULT_TRAIN_LENGTH = 1024  # a mean-pooled species run trains on windows of at most this length by default
HEAD_INITS = ("random", "probe")  # a new head: random, or fitted on the untrained features (tasks.probe)
PROBE_PER_SPECIES = 32  # train-split windows per species that the probe is fitted on


# ---- models -------------------------------------------------------------------------------------------------------
def build_classifier(labels: Sequence[str], window: int, preset: str | None = None, bidirectional: bool = False,
                     init_from: str | os.PathLike | None = None, pooling: str = "last") -> MambaClassifier:
    """A fresh classifier over ``labels`` for windows of ``window`` tokens, pooling the ``"last"`` token's hidden
    state (the paper's head) or the ``"mean"`` over the window.

    Its shape is the preset's, or (no preset, ``init_from`` given) the pretrained LM's; ``init_from`` (a
    ``mba dna pretrain`` run or model folder; a trained classifier is a CheckpointError, :func:`check_lm_donor`)
    then supplies the backbone weights (:func:`load_backbone`). A Caduceus
    ``init_from`` gives a :class:`~mamba_bio_audio.models.caduceus_classifier.CaduceusClassifier`
    (:mod:`~mamba_bio_audio.tasks.caduceus_init`).
    """
    if init_from is not None:
        from mamba_bio_audio.tasks.caduceus_init import build_caduceus_classifier, caduceus_folder

        folder = caduceus_folder(init_from)
        if folder is not None:
            return build_caduceus_classifier(labels, window, folder, preset, pooling)
    if init_from is not None and preset is None:
        config = _pretrained_config(init_from)
        config = dataclasses.replace(config, bidirectional=bidirectional, extra={})
    else:
        config = get_preset(preset or "tiny").model_config(bidirectional)
    config = dataclasses.replace(config, extra=dna_extra(window))
    model = MambaClassifier(config, num_classes=len(labels), pooling=pooling, labels=list(labels))
    if init_from is not None:
        load_backbone(model, init_from)
    return model


def _pretrained_config(path: str | os.PathLike):
    folder = model_dir(path)
    config = _saved_config(folder)
    check_dna_config(config, folder)
    check_lm_donor(config, folder)
    return config


def _saved_config(folder: Path):
    from mamba_bio_audio.config import MambaConfig

    return MambaConfig.load(folder / "config.json")


def check_lm_donor(config, folder: str | os.PathLike) -> None:
    """A pretrained language model's config, or a CheckpointError saying what ``folder`` holds instead (a trained
    classifier, whose head a language model does not have) and what ``--init-from`` expects here."""
    if "classifier" in config.extra:
        raise CheckpointError(f"{folder}: a trained classifier ('mba species train' or 'mba dna classify train'), "
                              f"not a pretrained language model; --init-from here expects a 'mba dna pretrain' run "
                              f"or model folder, or a Caduceus model")


def resolve_architecture(init_from: str | os.PathLike | None, bidirectional: bool | None,
                         pooling: str | None) -> tuple[bool, str]:
    """``(bidirectional, pooling)`` of a classifier started from ``init_from``: each given value (not None) as
    given, else the ``init_from`` model's (its ``bidirectional`` flag; a trained classifier's pooling too), else
    False and ``"mean"``.

    A causal donor may be made bidirectional (the mixers share their weights between the two directions: the
    backbone loads as it is); a bidirectional donor made causal (``bidirectional=False`` given) is a UserError:
    its backbone learned to read both ways, and silently dropping that was a bug. A given pooling other than a
    classifier donor's is used (the head is new either way). A Caduceus ``init_from`` keeps the given values.
    """
    if init_from is not None:
        from mamba_bio_audio.tasks.caduceus_init import caduceus_folder

        if caduceus_folder(init_from) is None:
            folder = model_dir(init_from)
            config = _saved_config(folder)
            if bidirectional is None:
                bidirectional = config.bidirectional
            elif config.bidirectional and not bidirectional:
                raise UserError(f"--init-from {init_from}: a bidirectional model; train it with --bidirectional "
                                f"(a unidirectional classifier would drop what its backbone learned reading "
                                f"backwards)")
            pooling = pooling or config.extra.get("classifier", {}).get("pooling")
    return bool(bidirectional), pooling or "mean"


def load_backbone(model: MambaClassifier, path: str | os.PathLike) -> None:
    """Copy the backbone of a pretrained MambaLM (``mba dna pretrain``) into ``model``'s backbone.

    A CheckpointError names the folder and the first tensor whose shape differs (different d_model or n_layer).
    """
    from mamba_bio_audio.models.lm import MambaLM

    folder = model_dir(path)
    check_lm_donor(_saved_config(folder), folder)
    lm = MambaLM.from_pretrained(folder)
    check_dna_config(lm.config, folder)
    copy_backbone(lm, model, folder)


def copy_backbone(donor, model: MambaClassifier, folder: str | os.PathLike) -> None:
    """Load ``donor``'s backbone weights (a MambaLM or a MambaClassifier read from ``folder``) into ``model``'s.

    A CheckpointError names the folder and the layer count or the first tensor whose shape differs.
    """
    hint = " (drop --preset to take the pretrained shape)"
    if len(donor.backbone.state_dict()) != len(model.backbone.state_dict()) or \
            donor.config.n_layer != model.config.n_layer:
        raise CheckpointError(f"{folder}: the pretrained model has {donor.config.n_layer} layers, this classifier "
                              f"{model.config.n_layer}{hint}")
    load_backbone_weights(donor, model, folder, hint)


# ---- the run's own record of its model (a --resume needs no donor) ----------------------------------------------
ARCHITECTURE_FILE = "architecture.json"  # in a classifier run's folder: its model's config and donor


def record_architecture(out: str | os.PathLike, model: torch.nn.Module, init_from: str | os.PathLike | None,
                        pretrain_overlap: dict | None = None) -> Path:
    """Write ``out/architecture.json`` (atomically) at the start of a ``species train`` / ``dna classify train``
    run: the planned classifier's config (``model.config``, as its saved config.json holds it: the shape, the head,
    the DNA window) and where its starting weights came from (``init_from``, and ``pretrain_overlap`` of
    :func:`~mamba_bio_audio.tasks.pretrain_overlap.check_pretrain_overlap`). A ``--resume`` rebuilds the model from
    it (:func:`recorded_architecture`, :func:`classifier_from_record`): the donor is then neither read nor needed
    (the checkpoint holds the weights)."""
    path = Path(out) / ARCHITECTURE_FILE
    record = {"model": model.config.to_dict(), "init_from": None if init_from is None else str(init_from),
              "pretrain_overlap": pretrain_overlap}
    return atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def recorded_architecture(out: str | os.PathLike) -> dict | None:
    """What a ``--resume`` of the classifier run in ``out`` builds its model from instead of the donor:
    ``{"config": MambaConfig or CaduceusConfig, "init_from": str | None, "pretrain_overlap": dict | None,
    "recorded": True}`` from ``out/architecture.json`` (:func:`record_architecture`). A run begun before that file
    was written: the config of ``out/model`` (saved when an earlier part of the run finished) and the
    ``pretrain_overlap`` of its metrics.json, ``"recorded": False`` (the resume writes the record); None when neither
    is there (the model is then built from the donor, as the run began). An unreadable record is a one-line
    CheckpointError naming it."""
    from mamba_bio_audio.checkpoint import CONFIG_NAME
    from mamba_bio_audio.config import read_json_object

    out = Path(out)
    path = out / ARCHITECTURE_FILE
    if path.is_file():
        record = read_json_object(path)
        if not isinstance(record.get("model"), dict):
            raise CheckpointError(f"{path}: holds no model config (the 'model' object)")
        overlap = record.get("pretrain_overlap")
        return {"config": _config_of_record(record["model"], path), "init_from": record.get("init_from"),
                "pretrain_overlap": overlap if isinstance(overlap, dict) else None, "recorded": True}
    legacy = out / "model" / CONFIG_NAME
    if not legacy.is_file():
        return None
    try:
        metrics = read_json_object(out / "metrics.json")
    except CheckpointError:
        metrics = {}
    overlap = metrics.get("pretrain_overlap")
    return {"config": _config_of_record(read_json_object(legacy), legacy), "init_from": metrics.get("init_from"),
            "pretrain_overlap": overlap if isinstance(overlap, dict) else None, "recorded": False}


def _config_of_record(data: dict, source: Path):
    from mamba_bio_audio.config import MambaConfig
    from mamba_bio_audio.models.caduceus import CaduceusConfig, is_caduceus_config

    try:
        return CaduceusConfig.from_dict(data) if is_caduceus_config(data) else MambaConfig.from_dict(dict(data))
    except (UserError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: not a model config this program reads ({e})") from None


def recorded_head(record: dict, bidirectional: bool | None, pooling: str | None) -> tuple[bool, str]:
    """``(bidirectional, pooling)`` of a resumed classifier: each given value (the run's config.yaml), else the
    recorded model's (:func:`recorded_architecture`), as :func:`resolve_architecture` does with a donor."""
    config = record["config"]
    if bidirectional is None:
        bidirectional = getattr(config, "bidirectional", False)
    pooling = pooling or config.extra.get("classifier", {}).get("pooling")
    return bool(bidirectional), pooling or "mean"


def classifier_from_record(record: dict, labels: Sequence[str], window: int, bidirectional: bool,
                           pooling: str) -> torch.nn.Module:
    """A new classifier (random weights: the resumed checkpoint's replace them) of the recorded model's shape
    (:func:`recorded_architecture`) over ``labels``, for windows of ``window`` tokens: a MambaClassifier, or a
    CaduceusClassifier when the run fine-tuned a Caduceus. The head and DNA window are this plan's, as in a fresh
    build, so that a store with other classes fails :func:`~mamba_bio_audio.recipes.outputs.check_checkpoint_fits`
    as before."""
    from mamba_bio_audio.models.caduceus import CaduceusConfig

    config = record["config"]
    if isinstance(config, CaduceusConfig):
        from mamba_bio_audio.models.caduceus_classifier import CaduceusClassifier

        config = dataclasses.replace(config, extra=dna_extra(window))
        return CaduceusClassifier(config, num_classes=len(labels), pooling=pooling, labels=list(labels))
    config = dataclasses.replace(config, bidirectional=bidirectional, extra=dna_extra(window))
    return MambaClassifier(config, num_classes=len(labels), pooling=pooling, labels=list(labels))


def load_classifier(path: str | os.PathLike, device: torch.device | str = "cpu") -> MambaClassifier:
    """A trained species classifier from a ``mba species train`` run folder (or its ``model/`` folder); a
    CaduceusClassifier when the run fine-tuned a Caduceus."""
    from mamba_bio_audio.tasks.caduceus_init import caduceus_folder, load_caduceus_classifier

    folder = model_dir(path)
    if caduceus_folder(folder) is not None:
        return load_caduceus_classifier(folder).to(device).eval()
    try:
        model = MambaClassifier.from_pretrained(folder)
    except UserError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{folder}: not a species classifier ({e})") from None
    check_dna_config(model.config, folder)
    if not model.labels:
        raise CheckpointError(f"{folder}: the classifier config holds no species labels")
    return model.to(device).eval()


def model_window(model: MambaClassifier) -> int | None:
    """The window length the model was trained on (None if the config does not say)."""
    return model.config.extra.get("dna", {}).get("window")


def label_map(model_labels: Sequence[str], store: TokenStore) -> np.ndarray:
    """``(num_store_species,)`` int64: the model's class index of each store label; a DataError if one is unknown."""
    species = store.meta["species"]
    unknown = [s for s in species if s not in model_labels]
    if unknown:
        raise DataError(f"{store.path}: species {', '.join(unknown)} unknown to the model (it knows "
                        f"{', '.join(model_labels)})")
    return np.array([list(model_labels).index(s) for s in species], dtype=np.int64)


# ---- training -----------------------------------------------------------------------------------------------------
@dataclass
class SpeciesSettings(TrainSettings):
    """:class:`~mamba_bio_audio.tasks.windows.TrainSettings` plus ``bidirectional`` mixers, ``init_from`` a
    pretrained LM, the classifier's ``pooling`` ("mean" or "last") and ``train_length``: the length of the training
    windows (None: ``length`` with last-token pooling, else at most :data:`DEFAULT_TRAIN_LENGTH`); ``head_init``
    "probe": the head fitted on the features of the model before training (:mod:`~mamba_bio_audio.tasks.probe`, its
    time taken from ``max_minutes``), "random": as built. ``length`` is the
    window the model is meant for (recorded with it: the default of evaluation and prediction). ``preset`` None:
    :data:`DEFAULT_PRESET`, or the shape of ``init_from``. ``bidirectional`` and ``pooling`` None: not given
    (False and "mean", or those of ``init_from``: :func:`resolve_architecture`)."""

    bidirectional: bool | None = None
    init_from: str | None = None
    pooling: str | None = None
    train_length: int | None = None
    head_init: str = "random"

    def resolved_train_length(self) -> int:
        if self.train_length is not None:
            if self.train_length < 2:
                raise UserError(f"--train-length must be at least 2, got {self.train_length}")
            return self.train_length
        return self.length if self.pooling == "last" else min(self.length, DEFAULT_TRAIN_LENGTH)


def plan_training(store_path: str | os.PathLike, settings: SpeciesSettings, resume: bool = False,
                  architecture: dict | None = None) -> WindowPlan:
    """Build the classifier, its task and data (:func:`~mamba_bio_audio.tasks.windows.plan_windows`): random
    RC-augmented train windows, fixed val windows. With ``resume`` the head is not probed (the checkpoint's
    weights replace it; nor is the probe's time taken from the budget again). ``architecture``: a resumed run's
    record (:func:`recorded_architecture`): the classifier is built from it (:func:`classifier_from_record`), not
    from ``settings.init_from``, which is then neither read nor needed (it stays in the summary).

    Every problem of the inputs (missing store, a species without a record as long as the window, a pretrained
    model of another shape) raises here, before the caller writes anything.
    """
    store = open_store(store_path)
    labels = list(store.meta["species"])
    if len(labels) < 2:
        raise DataError(f"{store.path}: holds {len(labels)} species; classification needs at least 2")
    if architecture is None:
        bidirectional, pooling = resolve_architecture(settings.init_from, settings.bidirectional, settings.pooling)
    else:
        bidirectional, pooling = recorded_head(architecture, settings.bidirectional, settings.pooling)
    settings = dataclasses.replace(settings, bidirectional=bidirectional, pooling=pooling)
    preset = settings.preset or (None if settings.init_from else DEFAULT_PRESET)
    train_length = settings.resolved_train_length()
    if train_length != settings.length:  # the window the model is meant for must exist too (a DataError if not)
        WindowSampler(store, "train", settings.length, max_n_fraction=settings.max_n_fraction)
    training = dataclasses.replace(settings, preset=preset, length=train_length)
    if settings.head_init not in HEAD_INITS:
        raise UserError(f"head_init must be one of {', '.join(HEAD_INITS)}, got {settings.head_init!r}")
    torch.manual_seed(settings.seed)
    if architecture is None:
        model = build_classifier(labels, settings.length, preset, settings.bidirectional, settings.init_from,
                                 settings.pooling)
    else:
        model = classifier_from_record(architecture, labels, settings.length, settings.bidirectional,
                                       settings.pooling)
    probe = None
    if settings.head_init == "probe" and not resume:
        probe, training = _probe_head(model, store, training)
    plan = plan_windows(store, training, lambda: model, labelled=True)
    plan.summary.update(labels=labels, train_species=plan.species, init_from=settings.init_from,
                        bidirectional=settings.bidirectional, pooling=settings.pooling, window=settings.length,
                        train_length=train_length, head_init=settings.head_init)
    if probe is not None:
        plan.summary["probe"] = probe
    return plan


def _probe_head(model: MambaClassifier, store: TokenStore, settings: SpeciesSettings) -> tuple[dict, SpeciesSettings]:
    """Fit ``model``'s head on :data:`PROBE_PER_SPECIES` train windows per species of ``settings.length`` (and their
    reverse complements when training augments with them); returns
    the probe's facts and ``settings`` with the probe's time taken from a ``max_minutes`` budget."""
    from mamba_bio_audio.tasks.probe import fit_head_by_probe

    WindowSampler(store, "train", settings.length, max_n_fraction=settings.max_n_fraction).check()
    windows = eval_windows(store, "train", settings.length, PROBE_PER_SPECIES, settings.seed + 3,
                           max_n_fraction=settings.max_n_fraction)
    tokens, labels = [t for t, _ in windows], windows.labels
    if settings.rc_prob > 0:  # training reads both strands: so does the probe, else fine-tuning starts by unlearning
        tokens, labels = tokens + [reverse_complement(t) for t in tokens], np.concatenate([labels, labels])
    probe = fit_head_by_probe(model, tokens, labels, device=process_device(settings.device))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the probe's cached blocks, before training takes its GPU
    if settings.max_minutes is not None and settings.max_steps is None:
        left = max(settings.max_minutes - probe["seconds"] / 60, settings.max_minutes / 10)
        settings = dataclasses.replace(settings, max_minutes=left)
    return probe, settings


def run_training(plan: WindowPlan, out: Path, resume: bool = False) -> dict:
    """Fit, save ``out/model``, and return the metrics (with the val accuracy at the training length if any)."""
    metrics = run_windows(plan, out, resume)
    if not is_main_process():  # the other processes of a multi-device run: their scores would go unused
        return metrics
    if plan.val is not None:  # Lightning hands the model back on the CPU: evaluate on the training device
        probs = predict_proba(plan.model, (t for t, _ in plan.val), device=torch_device(plan.trainer.device))
        metrics["val_accuracy"] = float((probs.argmax(1) == plan.val.labels).mean())
        metrics["val_windows"] = len(plan.val)
    return metrics


def split_accuracy(model: MambaClassifier, store_path: str | os.PathLike, split: str, length: int,
                   per_species: int, seed: int = 0, device: torch.device | str = "cpu") -> float:
    """Accuracy of ``model`` on ``per_species`` fixed windows of ``length`` per species of ``split``."""
    store = open_store(store_path)
    windows = eval_windows(store, split, length, per_species, seed)
    probs = predict_proba(model, (t for t, _ in windows), device=device)
    return float((probs.argmax(1) == label_map(model.labels, store)[windows.labels]).mean())


def train_keeping_the_better(plan: WindowPlan, out: Path, store_path: str | os.PathLike, length: int,
                             val_per_species: int = 16, seed: int = 0) -> dict:
    """:func:`run_training` from a probed head, then keep whichever of the probed and the fine-tuned model scores
    higher on fixed val-split windows (``out/model`` is rewritten when the probe wins): a short fine-tuning can
    leave a model worse than its probe (the head's large weights amplify every change of the pooled states).
    Returns the training metrics with ``val_accuracy_probe``, ``val_accuracy_fine_tuned`` and ``kept``."""
    if not is_main_process():  # only the main process scores, keeps and saves
        return run_training(plan, out)
    device = torch_device(plan.trainer.device)
    probed = {k: v.detach().clone() for k, v in plan.model.state_dict().items()}
    before = split_accuracy(plan.model, store_path, "val", length, val_per_species, seed, device)
    metrics = run_training(plan, out)
    after = split_accuracy(plan.model, store_path, "val", length, val_per_species, seed, device)
    kept = "fine-tuned" if after >= before else "probe"
    if kept == "probe":
        plan.model.load_state_dict(probed)
        plan.model.save_pretrained(out / "model")
    return {**metrics, "val_accuracy_probe": before, "val_accuracy_fine_tuned": after, "kept": kept}


# ---- inference ----------------------------------------------------------------------------------------------------
def predict_proba(model: MambaClassifier, windows: Iterable[np.ndarray], batch_size: int | None = None,
                  device: torch.device | str = "cpu", rc_average: bool = False) -> np.ndarray:
    """Species probabilities ``(n, num_classes)`` float64 of windows (each ``(seqlen,)`` token ids, any lengths:
    consecutive windows of equal length share a batch). bf16 autocast on CUDA.

    ``rc_average``: the mean of the probabilities of each window and of its reverse complement (a window and its
    reverse complement are the same DNA read from the other strand).
    """
    device = torch.device(device)
    out = []
    with evaluating(model, device):
        for batch in batches(windows, batch_size):
            ids = torch.from_numpy(batch).to(device).long()
            with autocast(device):
                probs = torch.softmax(model(ids).double(), dim=-1)
                if rc_average:
                    probs = (probs + torch.softmax(model(reverse_complement(ids)).double(), dim=-1)) / 2
            out.append(probs.cpu().numpy())
    if not out:
        return np.zeros((0, model.num_classes))
    return np.concatenate(out)


# ---- evaluation ---------------------------------------------------------------------------------------------------
def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts: row = true class, column = predicted class."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def evaluate_lengths(model: MambaClassifier, store_path: str | os.PathLike, lengths: Sequence[int], *,
                     split: str = "test", per_species: int = 100, seed: int = 0, batch_size: int | None = None,
                     device: torch.device | str = "cpu", baseline: bool = True,
                     baseline_per_species: int | None = None, max_n_fraction: float = 0.1,
                     rc_average: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Accuracy and confusion matrix of ``model`` at each window length, beside the k-mer baseline.

    At each length: ``per_species`` fixed windows of each species of ``split`` (the same windows on every call
    with the same arguments), scored by the model and by a k-mer (k=6) logistic regression fit on
    ``baseline_per_species`` (default: ``per_species``, at least 32) windows per species of the train split at that
    length. Confusion matrices are in the model's label order.

    Returns a JSON-ready dict: ``accuracy``, ``confusion_matrix``, ``baseline_accuracy`` of the first length,
    ``labels``, ``chance``, and ``per_length``: one ``{"length", "windows", "accuracy", "confusion_matrix",
    "baseline_accuracy", "baseline_confusion_matrix", "seconds"}`` per length.
    """
    store = open_store(store_path)
    labels = list(model.labels)
    to_model = label_map(labels, store)
    C = len(labels)
    baseline_per_species = baseline_per_species or max(per_species, 32)
    rows = []
    for length in lengths:
        started = time.time()
        test = eval_windows(store, split, length, per_species, seed, max_n_fraction=max_n_fraction)
        y = to_model[test.labels]
        pred = predict_proba(model, (t for t, _ in test), batch_size, device, rc_average).argmax(1)
        row = {"length": int(length), "windows": len(test), "species": len(np.unique(y)),
               "accuracy": float((pred == y).mean()),
               "confusion_matrix": confusion_matrix(y, pred, C).tolist()}
        if baseline:
            train = eval_windows(store, "train", length, baseline_per_species, seed + 1,
                                 max_n_fraction=max_n_fraction)
            base = kmer_baseline(train, to_model[train.labels], test, C).argmax(1)
            row["baseline_accuracy"] = float((base == y).mean())
            row["baseline_confusion_matrix"] = confusion_matrix(y, base, C).tolist()
        row["seconds"] = round(time.time() - started, 2)
        rows.append(row)
        if log is not None:
            log(format_row(row))
    first = rows[0]
    result = {"accuracy": first["accuracy"], "confusion_matrix": first["confusion_matrix"], "length": first["length"],
              "labels": labels, "split": split, "per_species": per_species, "seed": seed, "rc_average": rc_average,
              "chance": 1.0 / first["species"], "per_length": rows}
    if baseline:
        result["baseline_accuracy"] = first["baseline_accuracy"]
        result["baseline"] = {"name": BASELINE_NAME, "k": BASELINE_K, "l2": BASELINE_L2, "train_split": "train",
                              "train_per_species": baseline_per_species}
    return result


def format_row(row: dict) -> str:
    base = f"   k-mer baseline {row['baseline_accuracy']:.3f}" if "baseline_accuracy" in row else ""
    return f"length {row['length']:>8}: accuracy {row['accuracy']:.3f}{base}   ({row['windows']} windows)"


def accuracy_table(result: dict) -> str:
    """A small plain-text table of :func:`evaluate_lengths`' result."""
    lines = [f"{'length':>9}  {'mamba':>6}  {'6-mer LR':>8}  windows",
             *(f"{r['length']:>9}  {r['accuracy']:>6.3f}  {r.get('baseline_accuracy', float('nan')):>8.3f}  "
               f"{r['windows']:>7}" for r in result["per_length"])]
    lines.append(f"(chance {result['chance']:.3f}; {result['split']} split)")
    return "\n".join(lines)


def plot_accuracy_vs_length(path: str | os.PathLike, result: dict, title: str = "") -> None:
    """PNG of accuracy against window length (log2 axis): the model, the k-mer baseline and chance. Atomic write."""
    plt = pyplot()

    rows = result["per_length"]
    lengths = [r["length"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    ax.plot(lengths, [r["accuracy"] for r in rows], "o-", label="Mamba classifier")
    if "baseline_accuracy" in rows[0]:
        ax.plot(lengths, [r["baseline_accuracy"] for r in rows], "s--", label="6-mer logistic regression")
    ax.axhline(result["chance"], color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths)
    ax.set_xticklabels([_short(n) for n in lengths])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("window length (bases)")
    ax.set_ylabel(f"accuracy ({result['split']} split)")
    ax.set_title(title or "species accuracy vs window length", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _short(n: int) -> str:
    for unit, size in (("M", 2**20), ("k", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


# ---- prediction on FASTA files ------------------------------------------------------------------------------------
def window_starts(record_length: int, window: int, max_windows: int = 0) -> np.ndarray:
    """Starts of non-overlapping windows tiling a record; the last one is moved back to end at the record's end.

    A record shorter than ``window`` is one window ``[0]`` (shorter than the others). ``max_windows`` > 0 keeps that
    many, evenly spaced.
    """
    if record_length <= window:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, record_length - window + 1, window)
    if starts[-1] + window < record_length:
        starts = np.append(starts, record_length - window)
    if 0 < max_windows < starts.size:
        starts = starts[np.linspace(0, starts.size - 1, max_windows).round().astype(np.int64)]
    return starts


def predict_records(model: MambaClassifier, paths: Sequence[str | os.PathLike], *, window: int | None = None,
                    per_window: bool = False, max_windows: int = 0, batch_size: int | None = None,
                    device: torch.device | str = "cpu", lenient: bool = False,
                    rc_average: bool = False) -> Iterator[dict]:
    """Species probabilities for every record of FASTA (or 2bit) files, or for every window of it.

    Windows of ``window`` tokens (default: the model's training window) tile each record
    (:func:`window_starts`). Yields, per record (``per_window`` False), ``{"file", "record", "length", "windows",
    "probs": (num_classes,)}`` with the mean of its windows' probabilities, or, per window, ``{"file", "record",
    "start", "end", "probs"}``. A window without a single A/C/G/T base (all N: an assembly gap) says nothing about
    the species: it is left out of its record's mean (``windows`` counts those averaged), and a window, or a record,
    with nothing to average gets NaN probabilities (:func:`predictions_tsv` writes no prediction for it). Files are
    read one record at a time; a bad file raises a DataError naming it.
    """
    from mamba_bio_audio.data_prep.dna.fasta import read_records

    window = window or model_window(model)
    if not window:
        raise UserError("the model does not record its training window length: pass --window")
    for path in paths:
        for header, tokens in read_records(path, lenient):
            starts = window_starts(tokens.size, window, max_windows)
            called = np.array([has_bases(tokens[s: s + window]) for s in starts], dtype=bool)
            probs = np.full((starts.size, model.num_classes), np.nan)
            probs[called] = predict_proba(model, (tokens[s: s + window] for s in starts[called]), batch_size, device,
                                          rc_average)
            if per_window:
                for s, p in zip(starts.tolist(), probs):
                    yield {"file": str(path), "record": header.id, "start": s, "end": min(s + window, tokens.size),
                           "probs": p}
            else:
                mean = probs[called].mean(axis=0) if called.any() else np.full(model.num_classes, np.nan)
                yield {"file": str(path), "record": header.id, "length": int(tokens.size),
                       "windows": int(called.sum()), "probs": mean}


def has_bases(tokens: np.ndarray) -> bool:
    """Whether ``tokens`` ``(n,)`` (uint8 ids) hold at least one A, C, G or T."""
    return count_unknown(tokens) < tokens.size


def predictions_tsv(rows: Iterable[dict], labels: Sequence[str]) -> str:
    """Tab-separated text of :func:`predict_records` rows: the row's fields, ``predicted``, then one probability
    column ``p_<species>`` per label (each row's probabilities sum to 1 up to the 6 printed decimals). A row of NaN
    probabilities (no A/C/G/T base read) has an empty ``predicted`` and ``nan`` probabilities."""
    lines, keys = [], None
    for row in rows:
        if keys is None:
            keys = [k for k in row if k != "probs"]
            lines.append("\t".join([*keys, "predicted", *(f"p_{name}" for name in labels)]))
        probs = row["probs"]
        predicted = "" if np.isnan(probs).any() else labels[int(np.argmax(probs))]
        lines.append("\t".join([*(str(row[k]) for k in keys), predicted,
                                *(f"{p:.6f}" for p in probs)]))
    return "\n".join(lines) + "\n" if lines else ""

