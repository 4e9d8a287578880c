"""Classification of labelled sequences: the metrics, batched prediction of mixed lengths, class weights,
--init-from, and ``mba dna classify prepare -> train -> evaluate -> predict`` end to end on CSV, labelled FASTA,
Genomic Benchmarks and Nucleotide Transformer fixtures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mamba_bio_audio import MambaClassifier, MambaConfig
from mamba_bio_audio.metrics.classification import (
    auroc,
    classification_metrics,
    confusion_matrix,
    macro_f1,
    mcc,
)
from mamba_bio_audio.tasks.classify import (
    WeightedClassificationTask,
    build_model,
    class_weights,
    predict_proba,
)
from mamba_bio_audio.tasks.windows import dna_extra
from mamba_bio_audio.training.module import OptimConfig

from helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- metrics ------------------------------------------------------------------------------------------------------
def test_binary_metrics_against_hand_computed_values():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    pred = np.array([1, 1, 0, 0, 0, 1, 0, 1])
    cm = confusion_matrix(y, pred, 2)
    assert cm.tolist() == [[3, 1], [1, 3]]
    tp, tn, fp, fn = 3, 3, 1, 1
    phi = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert mcc(cm) == pytest.approx(phi)
    assert macro_f1(cm) == pytest.approx(0.75)
    # AUROC: P(score of a positive > a negative), ties half: pairs (0.9,0.1)... hand count 14.5 of 16
    scores = np.array([0.9, 0.8, 0.3, 0.3, 0.1, 0.7, 0.2, 0.6])
    wins = sum((p > n) + 0.5 * (p == n) for p in scores[y == 1] for n in scores[y == 0])
    assert auroc(y, scores) == pytest.approx(wins / 16)
    assert np.isnan(auroc(np.ones(3), np.arange(3.0)))


def test_multiclass_mcc_and_constant_predictions():
    cm = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 5]])
    assert mcc(cm) == pytest.approx(1.0) and macro_f1(cm) == pytest.approx(1.0)
    assert mcc(np.array([[4, 0], [6, 0]])) == 0.0  # a constant guess carries no correlation
    probs = np.eye(3)[[0, 1, 2, 2]]
    result = classification_metrics(np.array([0, 1, 2, 1]), probs)
    assert result["accuracy"] == 0.75 and "auroc" not in result and result["n"] == 4


# ---- model pieces -------------------------------------------------------------------------------------------------
def tiny_model(num_classes=2, **kw) -> MambaClassifier:
    torch.manual_seed(0)
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4, extra=dna_extra(32), **kw)
    return MambaClassifier(config, num_classes=num_classes, pooling="mean", labels=["a", "b", "c"][:num_classes])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_predict_proba_of_mixed_lengths_equals_one_at_a_time(bidirectional):
    model = tiny_model(bidirectional=bidirectional)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(7, 11, n).astype(np.uint8) for n in (3, 40, 17, 17, 9, 64)]
    together = predict_proba(model, seqs, batch_size=4)
    alone = np.concatenate([predict_proba(model, [s], batch_size=1) for s in seqs])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_rc_average_is_the_mean_over_both_strands():
    from mamba_bio_audio.data_prep.dna.tokenizer import reverse_complement
    from mamba_bio_audio.tasks.classify import _centre

    model = tiny_model(num_classes=3)
    rng = np.random.default_rng(1)
    seqs = [rng.integers(7, 11, n).astype(np.uint8) for n in (5, 40, 17, 33, 64)]
    rc = [reverse_complement(s) for s in seqs]
    both = predict_proba(model, seqs, batch_size=4, rc_average=True)
    np.testing.assert_allclose(both, (predict_proba(model, seqs, 4) + predict_proba(model, rc, 4)) / 2, atol=1e-12)
    np.testing.assert_allclose(predict_proba(model, rc, 4, rc_average=True), both, rtol=1e-5, atol=1e-6)
    assert not np.allclose(predict_proba(model, seqs, 4), both, atol=1e-4)  # a causal model reads strands apart
    # with a crop: the reverse complement of the centre bases the model reads
    cropped = predict_proba(model, seqs, 4, crop=16, rc_average=True)
    flipped = [reverse_complement(_centre(s, 16)) for s in seqs]
    np.testing.assert_allclose(cropped, (predict_proba(model, seqs, 4, crop=16) + predict_proba(model, flipped, 4)) / 2,
                               atol=1e-12)


def test_class_weights_and_the_weighted_loss():
    weights = class_weights({"a": 30, "b": 10}, ["a", "b"])
    assert weights == pytest.approx([40 / 60, 40 / 20])
    model = tiny_model()
    task = WeightedClassificationTask(model, OptimConfig(), weights)
    batch = {"input_ids": torch.randint(7, 11, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.bool),
             "label": torch.tensor([0, 1, 1, 0])}
    loss, _ = task.compute_loss(batch)
    logits = model(batch["input_ids"], batch["attention_mask"])
    expected = F.cross_entropy(logits, batch["label"], weight=torch.tensor(weights))
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, F.cross_entropy(logits, batch["label"]))


def test_init_from_a_pretrained_lm_or_a_trained_classifier(tmp_path):
    from mamba_bio_audio.models.lm import MambaLM

    torch.manual_seed(3)
    lm_config = MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4, extra=dna_extra(64))
    lm = MambaLM(lm_config)
    lm.save_pretrained(tmp_path / "lm" / "model")
    model = build_model(["x", "y", "z"], 32, None, False, "mean", tmp_path / "lm")
    for name, tensor in lm.backbone.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[name], tensor)
    donor = tiny_model(num_classes=2)
    donor.save_pretrained(tmp_path / "cls")
    model = build_model(["x", "y", "z"], 32, None, True, "last", tmp_path / "cls")
    assert model.num_classes == 3 and model.config.bidirectional and model.labels == ["x", "y", "z"]
    for name, tensor in donor.backbone.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[name], tensor)


# ---- end to end through the CLI -----------------------------------------------------------------------------------
def make_rows(n=48, seed=0):
    """(id, sequence, label, split) rows of two classes that differ in composition, lengths 6 to 40."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "ab"[i % 2]
        bases = list("GGCCA") if label == "a" else list("AATTG")
        split = "test" if i % 12 in (10, 11) else "train"
        rows.append((f"s{i}", "".join(rng.choice(bases, rng.integers(6, 41))), label, split))
    return rows


def write_fixtures(root: Path, rows) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    csv = root / "seqs.csv"
    csv.write_text("id,sequence,label,split\n" + "".join(f"{i},{s},{y},{sp}\r\n" for i, s, y, sp in rows))
    fasta = root / "seqs.fa"
    fasta.write_text("".join(f">{i} label={y} split={sp}\n{s}\n" for i, s, y, sp in rows))
    gb = root / "gb"
    for i, s, y, sp in rows:
        (gb / sp / y).mkdir(parents=True, exist_ok=True)
        (gb / sp / y / f"{i}.txt").write_text(s)
    nt = root / "nt"
    nt.mkdir()
    for split in ("train", "test"):
        (nt / f"{split}.csv").write_text("sequence,label,name\n" + "".join(
            f"{s},{y},{i}\n" for i, s, y, sp in rows if sp == split))
    return {"csv": csv, "fasta": fasta, "gb": gb, "nt": nt}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A CSV store and a model trained on it for a few steps: (root, fixtures, store, run)."""
    import _pytest.capture  # noqa: F401  (capsys is function-scoped: run the CLI directly here)

    from mamba_bio_audio.cli import main

    root = tmp_path_factory.mktemp("classify")
    fixtures = write_fixtures(root / "in", make_rows())
    store, run = root / "store", root / "run"
    for args in (["prepare", fixtures["csv"], "--out", store, "--split-column", "split", "--id-column", "id"],
                 ["train", "--data", store, "--out", run, "--max-steps", "4", "--batch-size", "4", "--preset",
                  "tiny", "--device", "cpu", "--val-every", "4", "--class-weights"]):
        with pytest.raises(SystemExit) as info:
            main(["dna", "classify", *map(str, args)])
        assert info.value.code == 0
    return root, fixtures, store, run


def test_train_writes_a_model_and_validation_metrics(trained):
    _, _, _, run = trained
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["labels"] == ["a", "b"] and metrics["max_steps"] == 4
    assert set(metrics["val"]) >= {"accuracy", "mcc", "macro_f1", "auroc", "confusion_matrix"}
    assert (run / "model" / "config.json").is_file() and len(metrics["class_weights"]) == 2


@pytest.mark.parametrize("fmt", ["csv", "fasta", "gb", "nt"])
def test_evaluate_and_predict_on_every_input_format(trained, fmt, tmp_path, capsys):
    _, fixtures, _, run = trained
    store = tmp_path / "store"
    flags = ["--split-column", "split", "--id-column", "id"] if fmt == "csv" else []
    code, out, err = run_cli(["dna", "classify", "prepare", fixtures[fmt], "--out", store, *flags], capsys)
    assert code == 0, err
    assert "test: a 4, b 4" in out
    code, out, err = run_cli(["dna", "classify", "evaluate", "--checkpoint", run, "--data", store, "--out",
                              tmp_path / "eval", "--device", "cpu"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result["n"] == 8 and result["labels"] == ["a", "b"]
    for name in ("model", "baseline"):
        assert 0 <= result[name]["accuracy"] <= 1 and np.array(result[name]["confusion_matrix"]).sum() == 8
    assert 30 <= result["baseline"]["train_sequences"] < 40 and "6-mer LR" in out  # train less the drawn val
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000
    assert (tmp_path / "eval" / "confusion_matrix_baseline.png").is_file()
    assert result["rc_average"] is False and result["baseline"]["rc_average"] is False
    if fmt == "csv":  # both strands, the model's and the baseline's: recorded, said, and they differ from one strand
        code, out, err = run_cli(["dna", "classify", "evaluate", "--checkpoint", run, "--data", store, "--out",
                                  tmp_path / "eval_rc", "--device", "cpu", "--rc-average"], capsys)
        assert code == 0, err
        both = json.loads((tmp_path / "eval_rc" / "metrics.json").read_text())
        assert both["rc_average"] is True and both["baseline"]["rc_average"] is True
        assert "both strands averaged" in out and both["n"] == 8
        assert both["model"]["confusion_matrix"] != [] and np.array(both["baseline"]["confusion_matrix"]).sum() == 8
    code, out, err = run_cli(["dna", "classify", "predict", "--checkpoint", run, fixtures[fmt], "--out",
                              tmp_path / "preds.tsv", "--device", "cpu", *flags], capsys)
    assert code == 0, err
    lines = (tmp_path / "preds.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[-3:] == ["predicted", "p_a", "p_b"] and len(lines) == 49
    for line in lines[1:]:
        fields = dict(zip(header, line.split("\t")))
        assert float(fields["p_a"]) + float(fields["p_b"]) == pytest.approx(1, abs=1e-5)
        assert fields["predicted"] in ("a", "b")
    if fmt == "csv":
        code, _, err = run_cli(["dna", "classify", "predict", "--checkpoint", run, fixtures[fmt], "--out",
                                tmp_path / "preds_rc.tsv", "--device", "cpu", "--rc-average", *flags], capsys)
        assert code == 0, err
        one, both = ([line.split("\t") for line in (tmp_path / name).read_text().splitlines()[1:]]
                     for name in ("preds.tsv", "preds_rc.tsv"))
        assert [r[0] for r in one] == [r[0] for r in both] and any(a[-1] != b[-1] for a, b in zip(one, both))


def test_predict_without_labels_and_a_store_with_unknown_labels(trained, tmp_path, capsys):
    _, _, _, run = trained
    unlabelled = tmp_path / "new.fa"
    unlabelled.write_text(">q1\nACGTACGT\n>q2\nGGCC\n")
    code, _, err = run_cli(["dna", "classify", "predict", "--checkpoint", run, unlabelled, "--out",
                            tmp_path / "p.tsv", "--device", "cpu"], capsys)
    assert code == 0, err
    assert (tmp_path / "p.tsv").read_text().splitlines()[0] == "id\tlength\tpredicted\tp_a\tp_b"
    other = tmp_path / "other.csv"
    other.write_text("sequence,label\n" + "".join(f"ACGT{'A' * i},{'xy'[i % 2]}\n" for i in range(20)))
    code, _, err = run_cli(["dna", "classify", "prepare", other, "--out", tmp_path / "st"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["dna", "classify", "evaluate", "--checkpoint", run, "--data", tmp_path / "st",
                            "--out", tmp_path / "ev", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "labels x, y unknown to the model")
    assert not (tmp_path / "ev").exists()


def test_settings_without_a_crop_still_check_the_other_fields():
    from mamba_bio_audio.errors import UserError
    from mamba_bio_audio.tasks.classify import ClassifySettings

    assert ClassifySettings().length == 0
    with pytest.raises(UserError, match="--max-steps"):
        ClassifySettings(max_steps=0)
    with pytest.raises(UserError, match="--length"):
        dataclasses.replace(ClassifySettings(), length=1)


@pytest.mark.parametrize("first", [["--max-steps", "3"], ["--max-minutes", "1"]])
def test_resume_keeps_the_steps_the_run_had(trained, first, monkeypatch, tmp_path, capsys):
    """A run given --max-steps, or one that planned its steps from --max-minutes, resumed without --max-steps keeps
    its step count (and so its learning-rate schedule): no default, no second measurement of the step time."""
    from mamba_bio_audio.training.budget import planned_max_steps

    _, _, store, _ = trained
    monkeypatch.setattr("mamba_bio_audio.tasks.windows.DEFAULT_MAX_STEPS", 5)  # what a re-planned run would take
    monkeypatch.setattr("mamba_bio_audio.training.budget.seconds_per_step", lambda *a, **k: 17.0)  # 3 steps in 1 min
    run = tmp_path / "run"
    args = ["dna", "classify", "train", "--data", store, "--out", run, "--batch-size", "4", "--preset", "tiny",
            "--device", "cpu", "--val-every", "100"]
    code, _, err = run_cli([*args, *first], capsys)
    assert code == 0, err
    assert json.loads((run / "metrics.json").read_text())["max_steps"] == 3

    def measured_again(*a, **k):
        raise AssertionError("the resumed run measured the step time again")

    monkeypatch.setattr("mamba_bio_audio.training.budget.seconds_per_step", measured_again)
    resumed = [*args, "--resume", *(["--max-minutes", "1"] if "--max-minutes" in first else [])]
    code, _, err = run_cli(resumed, capsys)
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["max_steps"] == 3 and metrics["steps"] == 3
    assert planned_max_steps(run / "checkpoints" / "last.ckpt") == 3
