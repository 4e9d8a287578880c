"""Training flags of ``dna classify train`` and ``species train`` that decide what the model is: a --pack-length
shorter than some sequences is the crop recorded with the model (as --max-length is), a too short one is refused;
--init-from keeps the donor's bidirectional flag and pooling unless they are given, refuses to drop a donor's
bidirectionality, and ``species train`` says in one line that a trained classifier is not a pretrained LM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mamba_bio_audio import MambaClassifier, MambaConfig
from mamba_bio_audio.errors import CheckpointError, UserError
from mamba_bio_audio.tasks.classify import ClassifySettings, plan_training, prepare
from mamba_bio_audio.tasks.species import build_classifier, resolve_architecture
from mamba_bio_audio.tasks.windows import dna_extra

from helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A 'classify prepare' store of two classes, lengths 6 to 40 (train, val and test drawn)."""
    root = tmp_path_factory.mktemp("flags")
    rng = np.random.default_rng(0)
    rows = ["".join(rng.choice(list("GGCCA" if i % 2 else "AATTG"), rng.integers(6, 41))) + f",{'ab'[i % 2]}"
            for i in range(40)]
    (root / "seqs.csv").write_text("sequence,label\n" + "\n".join(rows) + "\n")
    prepare(root / "seqs.csv", root / "store")
    return root / "store"


def save_classifier(folder: Path, bidirectional: bool, pooling: str) -> Path:
    torch.manual_seed(0)
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4, bidirectional=bidirectional,
                         extra=dna_extra(32))
    MambaClassifier(config, num_classes=2, pooling=pooling, labels=["u", "v"]).save_pretrained(folder / "model")
    return folder


# ---- --pack-length ------------------------------------------------------------------------------------------------
def test_a_pack_length_shorter_than_a_sequence_is_the_recorded_crop(store, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(["dna", "classify", "train", "--data", store, "--out", run, "--pack", "--pack-length",
                            "16", "--max-steps", "1", "--batch-size", "4", "--preset", "tiny", "--device", "cpu"],
                           capsys)
    assert code == 0, err
    config = json.loads((run / "model" / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["extra"]["dna"]["crop"] == 16 and metrics["crop"] == 16
    assert metrics["packing"]["row_tokens"] == 16


def test_a_pack_length_at_least_the_longest_sequence_crops_nothing(store):
    plan = plan_training(store, ClassifySettings(pack=True, pack_length=64, max_steps=1, preset="tiny",
                                                 device="cpu"))
    assert plan.summary["crop"] is None and plan.model.config.extra["dna"]["crop"] is None


@pytest.mark.parametrize("pack_length", ["1", "7"])
def test_a_too_short_pack_length_is_a_one_line_error(store, tmp_path, capsys, pack_length):
    code, _, err = run_cli(["dna", "classify", "train", "--data", store, "--out", tmp_path / "run", "--pack",
                            "--pack-length", pack_length, "--max-steps", "1", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, f"--pack-length {pack_length}", "at least 8")
    assert not (tmp_path / "run" / "model").exists()


# ---- --init-from: the donor's architecture --------------------------------------------------------------------------
def test_init_from_a_bidirectional_classifier_keeps_its_flags(store, tmp_path):
    donor = save_classifier(tmp_path / "donor", bidirectional=True, pooling="last")
    plan = plan_training(store, ClassifySettings(init_from=str(donor), max_steps=1, device="cpu"))
    assert plan.model.config.bidirectional and plan.model.pooling == "last"
    assert plan.summary["bidirectional"] is True and plan.summary["pooling"] == "last"
    given = plan_training(store, ClassifySettings(init_from=str(donor), pooling="mean", bidirectional=True,
                                                  max_steps=1, device="cpu"))
    assert given.model.config.bidirectional and given.model.pooling == "mean"  # a given pooling is used


def test_the_cli_keeps_the_donors_flags_unless_given(store, tmp_path, capsys):
    donor = save_classifier(tmp_path / "donor", bidirectional=True, pooling="last")
    common = ["--data", store, "--max-steps", "1", "--batch-size", "4", "--device", "cpu", "--init-from", donor]
    code, _, err = run_cli(["dna", "classify", "train", "--out", tmp_path / "kept", *common], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "kept" / "model" / "config.json").read_text())
    assert config["bidirectional"] is True and config["extra"]["classifier"]["pooling"] == "last"
    code, _, err = run_cli(["dna", "classify", "train", "--out", tmp_path / "mean", "--pooling", "mean", *common],
                           capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "mean" / "model" / "config.json").read_text())["extra"]["classifier"][
        "pooling"] == "mean"
    code, _, err = run_cli(["dna", "classify", "train", "--out", tmp_path / "uni", "--unidirectional", *common],
                           capsys)
    assert_one_line_error(code, err, "a bidirectional model; train it with --bidirectional")


def test_a_causal_donor_may_be_made_bidirectional_but_not_the_other_way(tmp_path):
    causal = save_classifier(tmp_path / "causal", bidirectional=False, pooling="mean")
    assert resolve_architecture(causal, None, None) == (False, "mean")
    assert resolve_architecture(causal, True, None) == (True, "mean")
    assert resolve_architecture(None, None, None) == (False, "mean")
    bidirectional = save_classifier(tmp_path / "bi", bidirectional=True, pooling="mean")
    with pytest.raises(UserError, match="a bidirectional model; train it with --bidirectional") as info:
        resolve_architecture(bidirectional, False, None)
    assert "\n" not in str(info.value)


def test_species_train_from_a_bidirectional_lm_keeps_it_bidirectional(tmp_path):
    from mamba_bio_audio.data_prep.dna.store import prepare_genomes
    from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes
    from mamba_bio_audio.models.lm import MambaLM
    from mamba_bio_audio.tasks.species import SpeciesSettings
    from mamba_bio_audio.tasks.species import plan_training as plan_species

    write_synthetic_genomes(tmp_path / "genomes", n_species=2, strains=3, length=2_000, seed=0)
    species_store = prepare_genomes(tmp_path / "genomes", tmp_path / "store", "strain", seed=0)
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4, bidirectional=True, extra=dna_extra(64))
    MambaLM(config).save_pretrained(tmp_path / "lm" / "model")
    plan = plan_species(species_store, SpeciesSettings(length=64, init_from=str(tmp_path / "lm"), max_steps=1,
                                                       val_per_species=0, device="cpu"))
    assert plan.model.config.bidirectional and plan.summary["bidirectional"] is True


# ---- species --init-from a classifier ------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", [None, "tiny"])
def test_species_init_from_a_classifier_says_what_it_expects(tmp_path, preset):
    donor = save_classifier(tmp_path / "cls", bidirectional=False, pooling="mean")
    with pytest.raises(CheckpointError) as info:
        build_classifier(["x", "y"], 32, preset, False, donor, "mean")
    message = str(info.value)
    assert "a trained classifier" in message and "'mba dna pretrain' run" in message and "\n" not in message


# ---- the default batch size and one long sequence ----------------------------------------------------------------
def test_one_long_sequence_does_not_shrink_the_packed_batch(tmp_path):
    """tiny's token budget is 2^16: a padded bucket of the longest sequences must fit it (batch 1 with a 70,000-base
    sequence), while packed rows plan the batch for the mean length (the preset's 16 sequences per step)."""
    rng = np.random.default_rng(0)
    rows = ["".join(rng.choice(list("ACGT"), 30)) + f",{'ab'[i % 2]}" for i in range(30)]
    rows.append("".join(rng.choice(list("ACGT"), 70_000)) + ",a")
    (tmp_path / "seqs.csv").write_text("sequence,label,split\n" + "\n".join(f"{r},train" for r in rows) + "\n")
    prepare(tmp_path / "seqs.csv", tmp_path / "store", split_column="split")
    padded = plan_training(tmp_path / "store", ClassifySettings(max_steps=1, preset="tiny", device="cpu"))
    assert padded.summary["batch_size"] == 1 and padded.summary["batch_planned_for_length"] == 70_000
    packed = plan_training(tmp_path / "store", ClassifySettings(pack=True, max_steps=1, preset="tiny", device="cpu"))
    assert packed.summary["batch_size"] == 16 and packed.summary["batch_planned_for_length"] < 3_000
    assert packed.summary["packing"]["row_tokens"] == 70_000 and packed.summary["packing"]["rows_per_step"] == 1
