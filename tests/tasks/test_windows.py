"""The one planner of window training (``species train`` and ``dna pretrain``): what it builds, and its defaults."""

from __future__ import annotations

import pytest
import torch

from mamba_bio_audio.data_prep.dna.store import prepare_genomes
from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes
from mamba_bio_audio.errors import DataError, UserError
from mamba_bio_audio.tasks.dna_lm import plan_pretraining
from mamba_bio_audio.tasks.species import SpeciesSettings, plan_training
from mamba_bio_audio.tasks.windows import PRESETS, TrainSettings, batch_size_for, open_store, warmup_stages
from mamba_bio_audio.training.module import ClassificationTask, LMTask


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    work = tmp_path_factory.mktemp("windows")
    write_synthetic_genomes(work / "genomes", n_species=3, strains=3, length=3_000, seed=0)
    return prepare_genomes(work / "genomes", work / "store", "strain", seed=0)


def test_species_and_pretraining_plans_share_one_setup(store):
    species = plan_training(store, SpeciesSettings(length=64, max_steps=10, val_per_species=2, preset="tiny"))
    lm = plan_pretraining(store, TrainSettings(length=64, max_steps=10, val_per_species=2))
    assert isinstance(species.task, ClassificationTask) and isinstance(lm.task, LMTask)
    tiny = PRESETS["tiny"]
    assert (species.summary["lr"], lm.summary["lr"]) == (tiny.lr, tiny.pretrain_lr)
    for plan in (species, lm):
        assert plan.summary["preset"] == "tiny" and plan.summary["batch_size"] == tiny.batch_size
        assert plan.summary["validation"] == "6 windows of the val split" and len(plan.val) == 6
        assert plan.trainer.max_steps == 10 and plan.trainer.val_every == 2
        assert plan.summary["parameters"] == sum(p.numel() for p in plan.model.parameters())
    assert set(species.datamodule.val_samples[0]) == {"input_ids", "label"}
    assert set(lm.datamodule.val_samples[0]) == {"input_ids"}
    assert species.summary["labels"] == list(open_store(store).meta["species"])
    assert lm.summary["species"] == species.summary["train_species"]
    item = species.datamodule.sample_fn(0)
    assert item["input_ids"].dtype == torch.uint8 and item["input_ids"].shape == (64,) and "label" in item


def test_the_seed_decides_the_model(store):
    def weights(seed):
        plan = plan_pretraining(store, TrainSettings(length=64, seed=seed, val_per_species=0))
        return plan.model.backbone.embedding.weight

    assert torch.equal(weights(0), weights(0)) and not torch.equal(weights(0), weights(1))


def test_validation_off_and_checkpointing_on_request(store):
    plan = plan_training(store, SpeciesSettings(length=64, val_per_species=0, checkpoint_activations=True,
                                                batch_size=3, lr=0.5))
    assert plan.val is None and plan.trainer.val_every == 0 and plan.summary["validation"] == "--val-per-species 0"
    assert plan.model.gradient_checkpointing and plan.summary["batch_size"] == 3 and plan.summary["lr"] == 0.5


def test_inputs_are_checked_before_anything_is_written(store, tmp_path):
    with pytest.raises(DataError, match="no train record of at least 1000000 tokens"):
        plan_pretraining(store, TrainSettings(length=1_000_000))
    with pytest.raises(DataError):
        plan_training(tmp_path / "nothing", SpeciesSettings(length=64))
    assert list(tmp_path.iterdir()) == []


def test_batch_size_and_warmup_defaults():
    tiny = PRESETS["tiny"]
    assert batch_size_for(tiny, TrainSettings(length=64)) == tiny.batch_size
    assert batch_size_for(tiny, TrainSettings(length=2**20)) == 1  # capped by the token budget, at least one
    assert warmup_stages(TrainSettings(length=2**16, max_steps=100)) == (2**14, 10)
    assert warmup_stages(TrainSettings(length=2**10)) is None
    with pytest.raises(UserError, match="power of two"):
        warmup_stages(TrainSettings(length=3000, warmup_min_length=1000))
