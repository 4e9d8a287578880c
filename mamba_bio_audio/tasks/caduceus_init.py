"""Fine-tuning from a Caduceus checkpoint: what ``species`` and ``dna classify`` do when ``--init-from`` (or
``--checkpoint``) names a Caduceus model (a ``CaduceusForMaskedLM`` checkpoint such as
``kuleshov-group/caduceus-ps_seqlen-131k_d_model-256_n_layer-16``, a ``mba dna pretrain --objective mlm`` run, or a
fine-tuned :class:`~mamba_bio_audio.models.caduceus_classifier.CaduceusClassifier`).

The classifier takes the checkpoint's shape and backbone weights and a new mean-pooling head; ``--preset`` (another
shape) is refused, ``--bidirectional`` has no effect (a Caduceus reads both directions). A language model whose
vocabulary is not the hyena-12 tokenizer's (PlantCaduceus) has its vocabulary rows re-indexed by the token names
of its ``tokenizer.json`` (:func:`~mamba_bio_audio.models.caduceus.to_dna_vocabulary`), or is refused.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from mamba_bio_audio.checkpoint import read_config_dict
from mamba_bio_audio.errors import CheckpointError, UserError
from mamba_bio_audio.models.caduceus import (
    CaduceusLM,
    check_dna_vocabulary,
    is_caduceus_config,
    to_dna_vocabulary,
)
from mamba_bio_audio.models.caduceus_classifier import CaduceusClassifier
from mamba_bio_audio.tasks.windows import dna_extra, model_dir


def caduceus_folder(path: str | os.PathLike) -> Path | None:
    """The model folder of ``path`` (run folder, model folder or Hub id) when it holds a Caduceus model, else None."""
    folder = model_dir(path)
    try:
        data = read_config_dict(folder)
    except (CheckpointError, UserError):
        return None
    return folder if is_caduceus_config(data) else None


def build_caduceus_classifier(labels: Sequence[str], window: int, folder: Path, preset: str | None = None,
                              pooling: str = "mean") -> CaduceusClassifier:
    """A new classifier over ``labels`` with the backbone of the Caduceus model in ``folder`` (a CaduceusLM or a
    CaduceusClassifier, whose head is dropped) and a new head; ``window``: the length it is meant for."""
    if preset is not None:
        raise UserError(f"--preset {preset}: {folder} is a Caduceus model of its own shape (drop --preset)")
    donor = _read_donor(folder)
    config = dataclasses.replace(donor.config, extra=dna_extra(window))
    model = CaduceusClassifier(config, num_classes=len(labels), pooling=pooling, labels=list(labels))
    model.load_backbone_from(donor, folder)
    return model


def _read_donor(folder: Path) -> CaduceusLM | CaduceusClassifier:
    """The model in ``folder`` for the hyena-12 tokenizer: a classifier of ours as it is, a language model's
    vocabulary mapped (or refused) by :func:`~mamba_bio_audio.models.caduceus.to_dna_vocabulary`."""
    data = read_config_dict(folder)
    if "classifier" in data.get("extra", {}):
        donor = CaduceusClassifier.from_pretrained(folder)
        check_dna_vocabulary(donor.config, folder)
        return donor
    return to_dna_vocabulary(CaduceusLM.from_pretrained(folder), folder, folder)


def load_caduceus_classifier(folder: Path) -> CaduceusClassifier:
    """A trained Caduceus classifier (``species train`` / ``classify train`` from a Caduceus) with its labels."""
    model = CaduceusClassifier.from_pretrained(folder)
    check_dna_vocabulary(model.config, folder)
    if not model.labels:
        raise CheckpointError(f"{folder}: the classifier config holds no labels")
    return model
