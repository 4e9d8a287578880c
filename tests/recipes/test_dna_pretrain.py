"""``mba dna pretrain`` (genome folder, BED intervals over one FASTA) and ``species train --init-from`` it;
the BED reader; one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from mamba_bio_audio.cli import main
from mamba_bio_audio.data_prep.dna.bed import prepare_bed, read_bed, widen
from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.errors import DataError

from helpers import assert_one_line_error
from helpers import run_cli as run

SMALL = ["--length", "64", "--batch-size", "4", "--val-per-species", "2", "--device", "cpu"]




@pytest.fixture(scope="module")
def genomes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dna") / "genomes"
    write_synthetic_genomes(folder, n_species=3, strains=3, length=3_000, seed=1)
    return folder


@pytest.fixture(scope="module")
def pretrained(genomes):
    out = genomes.parent / "pretrained"
    with pytest.raises(SystemExit) as info:
        main(["dna", "pretrain", "--genomes", str(genomes), "--split-by", "strain", "--out", str(out),
              "--max-steps", "3", *SMALL])
    assert info.value.code == 0
    return out


def test_pretrain_reports_perplexity(pretrained):
    metrics = json.loads((pretrained / "metrics.json").read_text())
    assert 1 < metrics["val_perplexity"] < 12 and metrics["val_tokens"] == 6 * 63
    assert metrics["val_bits_per_base"] == pytest.approx(metrics["val_loss"] / 0.6931471805599453)
    assert metrics["val_perplexity"] == pytest.approx(2 ** metrics["val_bits_per_base"])
    config = json.loads((pretrained / "model" / "config.json").read_text())
    assert config["vocab_size"] == 12 and config["extra"]["dna"] == {"tokenizer": "hyena-12", "window": 64}
    assert (pretrained / "store" / "index.json").is_file() and (pretrained / "config.yaml").is_file()


def test_species_train_starts_from_the_pretrained_backbone(pretrained, genomes, capsys):
    from mamba_bio_audio.models.lm import MambaLM
    from mamba_bio_audio.tasks.species import build_classifier

    lm = MambaLM.from_pretrained(pretrained / "model")
    model = build_classifier(["a", "b"], 64, init_from=pretrained)  # the run folder or its model/ both work
    for name, tensor in lm.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor), name
    out = genomes.parent / "finetuned"
    code, _, err = run(["species", "train", "--data", pretrained / "store", "--out", out, "--max-steps", "1",
                        "--init-from", pretrained / "model", *SMALL], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["init_from"].endswith("model") and metrics["preset"] == "tiny"  # the pretrained model's shape


def test_fine_tuning_warns_when_the_backbone_was_pretrained_on_held_out_strains(pretrained, genomes, tmp_path,
                                                                              capsys):
    """The pretraining store split by record puts records of the species store's held-out strains in its train
    split: species train --init-from says so in one warning line and in metrics.json; fine-tuning on the
    pretraining run's own store (what --data STORE gives) has nothing to say."""
    from mamba_bio_audio.tasks.pretrain_overlap import held_out_overlap

    species_store = tmp_path / "species_store"
    code, _, err = run(["species", "prepare", "--genomes", genomes, "--out", species_store, "--split-by", "record",
                        "--seed", "3"], capsys)
    assert code == 0, err
    found = held_out_overlap(species_store, pretrained / "store")
    assert found is not None and 0 < found["overlap_bases"] <= found["held_out_bases"]
    out = tmp_path / "leaky"
    code, _, err = run(["species", "train", "--data", species_store, "--out", out, "--max-steps", "1",
                        "--init-from", pretrained, *SMALL], capsys)
    assert code == 0, err
    assert "was pretrained on" in err and "not held out" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pretrain_overlap"]["overlap_bases"] == found["overlap_bases"]
    assert held_out_overlap(pretrained / "store", pretrained / "store")["overlap_bases"] == 0
    code, _, err = run(["species", "train", "--data", pretrained / "store", "--out", tmp_path / "clean",
                        "--max-steps", "1", "--init-from", pretrained, *SMALL], capsys)
    assert code == 0 and "was pretrained on" not in err
    clean = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    assert clean["pretrain_overlap"]["overlap_bases"] == 0


def test_init_from_a_different_shape_is_one_line(pretrained, tmp_path, capsys):
    code, _, err = run(["species", "train", "--data", pretrained / "store", "--out", tmp_path / "r",
                        "--init-from", pretrained, "--preset", "paper-1.4m", *SMALL], capsys)
    assert_one_line_error(code, err, "pretrained model has 2 layers")
    assert not (tmp_path / "r").exists()


def test_a_language_model_is_not_a_species_classifier(pretrained, tmp_path, capsys):
    code, _, err = run(["species", "evaluate", "--checkpoint", pretrained, "--data", pretrained / "store",
                        "--out", tmp_path / "ev"], capsys)
    assert_one_line_error(code, err, "not a species classifier")
    assert not (tmp_path / "ev").exists()


def test_pretrain_on_bed_intervals(tmp_path, capsys):
    rng = __import__("numpy").random.default_rng(0)
    chroms = {name: "".join(rng.choice(list("ACGT"), n)) for name, n in (("chr1", 3000), ("chr2", 2000))}
    (tmp_path / "hg.fa").write_text("".join(f">{c}\n{s}\n" for c, s in chroms.items()))
    (tmp_path / "sequences.bed").write_text("chr1\t0\t1000\ttrain\nchr1\t1500\t2900\ttrain\n"
                                            "chr2\t100\t140\tvalid\nchr2\t1000\t2000\ttest\n")
    out = tmp_path / "run"
    code, stdout, err = run(["dna", "pretrain", "--bed", tmp_path / "sequences.bed", "--fasta", tmp_path / "hg.fa",
                             "--out", out, "--max-steps", "1", *SMALL], capsys)
    assert code == 0, err
    assert "val perplexity" in stdout
    store = TokenStore(out / "store")
    assert store.meta["species"] == ["hg"]
    assert [(r["record"], r["split"]) for r in store.records] == [
        ("chr1:0-1000", "train"), ("chr1:1500-2900", "train"), ("chr2:88-152", "val"), ("chr2:1000-2000", "test")]
    assert store.tokens(2).size == 64  # the 40-base val interval was widened to the window around its centre


def test_bed_widening_clear_of_other_splits_is_one_warning_line(tmp_path, capsys):
    rng = __import__("numpy").random.default_rng(1)
    (tmp_path / "hg.fa").write_text(">chr1\n" + "".join(rng.choice(list("ACGT"), 3000)) + "\n")
    # a 20-base train interval right beside a test one: centred at 64 bases it would cover test bases
    (tmp_path / "s.bed").write_text("chr1\t0\t1000\ttrain\nchr1\t1000\t1020\ttest\nchr1\t1100\t2900\ttrain\n")
    code, _, err = run(["dna", "pretrain", "--bed", tmp_path / "s.bed", "--fasta", tmp_path / "hg.fa",
                        "--out", tmp_path / "run", "--max-steps", "1", *SMALL], capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if "warning:" in line]
    assert len(lines) == 1 and "clear of the other splits" in lines[0] and "shifted off centre" in lines[0]


def test_bed_reader_and_widen(tmp_path):
    bed = tmp_path / "a.bed"
    bed.write_text("# comment\ntrack name=x\nchr1 5 10\nchr2\t0\t3\tvalidation\n")
    assert [(i.chrom, i.start, i.end, i.split, i.line) for i in read_bed(bed)] == [
        ("chr1", 5, 10, "train", 3), ("chr2", 0, 3, "val", 4)]
    assert widen(0, 10, 30, 100) == (0, 30)  # shifted right at the chromosome start
    assert widen(95, 100, 30, 100) == (70, 100)
    assert widen(40, 50, 30, 20) == (0, 20)  # never longer than the chromosome
    for text, fragment in [("chr1\t5\n", "line 1: expected"), ("chr1\tfive\t9\n", "must be integers"),
                           ("chr1\t9\t9\n", "empty or negative"), ("chr1\t1\t9\tholdout\n", "must be a split"),
                           ("\n", "no intervals")]:
        bed.write_text(text)
        with pytest.raises(DataError, match=fragment):
            read_bed(bed)


def test_bed_interval_problems_leave_no_store(tmp_path):
    (tmp_path / "g.fa").write_text(">chr1\n" + "ACGT" * 25 + "\n")
    for text, fragment in [("chr9\t0\t10\n", "chromosome 'chr9' is not in"), ("chr1\t50\t200\n", "runs past the end")]:
        (tmp_path / "a.bed").write_text(text)
        with pytest.raises(DataError, match=fragment):
            prepare_bed(tmp_path / "a.bed", tmp_path / "g.fa", tmp_path / "store")
        assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--data", "x", "--genomes", "y"], "exactly one of"),
    (["--bed", "x.bed"], "--bed and --fasta go together"),
    (["--data", "nope"], "not a token store"),
])
def test_pretrain_bad_sources(tmp_path, capsys, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["dna", "pretrain", *args, "--out", tmp_path / "r", *SMALL], capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "r").exists()


def test_pretrain_bad_genome_folder_leaves_nothing(tmp_path, capsys):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "a.fa").write_text(">r\nAC\n>r\nGT\n")
    code, _, err = run(["dna", "pretrain", "--genomes", tmp_path / "g", "--out", tmp_path / "r", *SMALL], capsys)
    assert_one_line_error(code, err, "a.fa", "duplicate record id")
    assert not (tmp_path / "r").exists()
