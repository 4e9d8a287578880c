"""``mba dna classify prepare`` on the inputs a review found mishandled: duplicates across the input's splits
(one warning line), NT task folders with their own column names, ``--format table`` on a folder, and an
external test set (a test-only store) that ``classify evaluate`` scores and ``classify train`` refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mamba_bio_audio.data_prep.store import TokenStore

from helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def rows(n: int, seed: int, labels: str = "ab") -> list[tuple[str, str]]:
    """``n`` distinct random sequences; label ``a`` ones are GC-rich."""
    rng = np.random.default_rng(seed)
    out = {}
    while len(out) < n:
        y = labels[len(out) % len(labels)]
        p = [0.1, 0.4, 0.4, 0.1] if y == "a" else [0.4, 0.1, 0.1, 0.4]
        out.setdefault("".join(rng.choice(list("ACGT"), int(rng.integers(20, 40)), p=p)), y)
    return list(out.items())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained for 2 steps on labels a, b: (root, run)."""
    from mamba_bio_audio.cli import main

    root = tmp_path_factory.mktemp("classify_prepare")
    data = root / "train.csv"
    data.write_text("sequence,label\n" + "".join(f"{s},{y}\n" for s, y in rows(40, 0)))
    for args in (["prepare", data, "--out", root / "store"],
                 ["train", "--data", root / "store", "--out", root / "run", "--max-steps", "2", "--batch-size", "4",
                  "--preset", "tiny", "--device", "cpu", "--val-every", "2"]):
        with pytest.raises(SystemExit) as info:
            main(["dna", "classify", *map(str, args)])
        assert info.value.code == 0
    return root, root / "run"


def test_duplicates_across_given_splits_are_one_warning_line(tmp_path, capsys):
    train = rows(20, 1)
    path = tmp_path / "given.csv"
    path.write_text("sequence,label,split\n" + "".join(f"{s},{y},train\n" for s, y in train)
                    + f"{train[0][0].lower()},{train[0][1]},test\n{train[1][0]},{train[1][1]},test\n"
                    + f"{train[2][0]},{train[2][1]},val\nACGTACGT,a,test\n")
    code, out, err = run_cli(["dna", "classify", "prepare", path, "--out", tmp_path / "st", "--split-column",
                              "split"], capsys)
    assert code == 0, err
    assert err.strip().splitlines() == ["mba dna classify prepare: warning: 1 val and 2 test sequence(s) are "
                                        "identical to a train sequence (the input's own splits; counted in the "
                                        "store's meta 'duplicates')"]
    assert TokenStore(tmp_path / "st").meta["duplicates"] == {"val": 1, "test": 2}
    code, out, err = run_cli(["dna", "classify", "prepare", path, "--out", tmp_path / "drawn"], capsys)
    # the split column not read: drawn per distinct sequence (no duplicates across splits), and one line saying so
    assert code == 0 and err.strip().splitlines() == [
        f"mba dna classify prepare: warning: {path}: column 'split' is not read (the splits are drawn or taken as "
        f"train instead); pass --split-column split to use it"]


def test_nt_folder_honours_the_column_flags(tmp_path, capsys):
    task = tmp_path / "task"
    task.mkdir()
    data = rows(30, 2)
    (task / "train.csv").write_text("seq,y\n" + "".join(f"{s},{y}\n" for s, y in data[:24]))
    (task / "test.csv").write_text("seq,y\n" + "".join(f"{s},{y}\n" for s, y in data[24:]))
    for fmt in ("auto", "nt"):
        out = tmp_path / f"st_{fmt}"
        code, stdout, err = run_cli(["dna", "classify", "prepare", task, "--out", out, "--format", fmt,
                                     "--sequence-column", "seq", "--label-column", "y"], capsys)
        assert code == 0, err
        store = TokenStore(out)
        assert store.meta["counts"]["test"] == {"a": 3, "b": 3}
        assert store.records[0]["id"] == "train.csv line 2" and store.records[-1]["id"] == "test.csv line 7"
    code, _, err = run_cli(["dna", "classify", "prepare", task, "--out", tmp_path / "t", "--format", "table"],
                           capsys)
    assert_one_line_error(code, err, "task: a folder; --format table reads one CSV/TSV file", "--format nt")
    assert not (tmp_path / "t").exists()


def test_an_external_test_set_is_a_test_only_store_for_evaluate(trained, tmp_path, capsys):
    _, run = trained
    external = tmp_path / "external.csv"
    external.write_text("sequence,label,split\n" + "".join(f"{s},{y},test\n" for s, y in rows(10, 3)))
    store = tmp_path / "ext"
    code, out, err = run_cli(["dna", "classify", "prepare", external, "--out", store, "--split-column", "split"],
                             capsys)
    assert code == 0, err
    assert "test-only store (no train split)" in out and "test: a 5, b 5" in out
    code, out, err = run_cli(["dna", "classify", "evaluate", "--checkpoint", run, "--data", store, "--out",
                              tmp_path / "ev", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "has no train split: the 6-mer baseline (fit on train) is left out" in out
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert result["n"] == 10 and result["labels"] == ["a", "b"] and "baseline" not in result
    assert np.array(result["model"]["confusion_matrix"]).sum() == 10
    code, _, err = run_cli(["dna", "classify", "train", "--data", store, "--out", tmp_path / "r", "--max-steps",
                            "1", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "a test-only store (no train split) is for 'classify evaluate'")
    assert not (tmp_path / "r").exists()
    # the library functions under the recipe refuse or skip on their own (no IndexError / ValueError)
    from mamba_bio_audio.errors import DataError
    from mamba_bio_audio.models.classifier import MambaClassifier
    from mamba_bio_audio.tasks.classify import ClassifySettings, evaluate, plan_training

    with pytest.raises(DataError, match="no sequences in the train split"):
        plan_training(store, ClassifySettings(max_steps=1, device="cpu"))
    scored = evaluate(MambaClassifier.from_pretrained(run / "model"), store, baseline=True)
    assert scored["n"] == 10 and "baseline" not in scored


def test_a_test_only_store_with_a_label_the_model_does_not_know(trained, tmp_path, capsys):
    _, run = trained
    external = tmp_path / "external.csv"
    external.write_text("sequence,label,split\n" + "".join(f"{s},{y},test\n" for s, y in rows(9, 4, "abz")))
    code, _, err = run_cli(["dna", "classify", "prepare", external, "--out", tmp_path / "ext", "--split-column",
                            "split"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["dna", "classify", "evaluate", "--checkpoint", run, "--data", tmp_path / "ext",
                            "--out", tmp_path / "ev", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "labels z unknown to the model (it knows a, b)")
    assert not (tmp_path / "ev").exists()
