"""``mba synthetic``: the task commands, the table command, evaluate, and one-line errors for bad flags."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from helpers import assert_one_line_error
from helpers import run_cli as run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("command", ["selective-copy", "induction-heads"])
@pytest.mark.parametrize("arch, layer", [("mamba", "S4D"), ("no-gate", "S6")])
def test_task_command_writes_metrics(command, arch, layer, micro_presets, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(["synthetic", command, "--out", str(out), "--arch", arch, "--layer", layer,
                             "--device", "cpu", "--max-steps", "1"], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["arch"], metrics["layer"], metrics["max_steps"]) == (arch, layer, 1)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    if command == "induction-heads":
        assert set(metrics["accuracy_by_length"]) == {"8", "16", "32"}
        assert [r["seqlen"] for r in metrics["lengths"]] == [8, 16, 32]
    assert "accuracy" in stdout


def test_table_writes_markdown_json_and_plot(micro_presets, tmp_path, capsys):
    code, stdout, err = run(["synthetic", "table", "--out", str(tmp_path / "results"), "--runs", str(tmp_path / "runs"),
                             "--device", "cpu"], capsys)
    assert code == 0, err
    results = tmp_path / "results"
    report = json.loads((results / "synthetic_tiny.json").read_text())
    assert {(r["arch"], r["layer"]) for r in report["selective_copying"]} == {
        ("mamba", "S6"), ("mamba", "S4D"), ("no-gate", "S6"), ("no-gate", "S4D")}
    assert {r["paper_accuracy"] for r in report["selective_copying"]} == {99.8, 56.4, 97.0, 18.3}
    assert [r["seqlen"] for r in report["induction_heads"]["lengths"]] == [8, 16, 32]
    for key in ("device", "torch", "date", "mamba_bio_audio"):
        assert key in report["environment"]
    md = (results / "synthetic_tiny.md").read_text()
    assert "paper" in md and "Mamba block" in md and "No gate" in md and "2^5" in md
    assert (results / "synthetic_tiny.png").stat().st_size > 0
    assert (tmp_path / "runs" / "selective_copy_no-gate_S4D" / "metrics.json").is_file()


def test_table_reuse_takes_rows_trained_earlier(micro_presets, tmp_path, capsys):
    runs = tmp_path / "runs"
    code, _, err = run(["synthetic", "selective-copy", "--out", str(runs / "selective_copy_mamba_S6"), "--device",
                        "cpu", "--max-steps", "1"], capsys)
    assert code == 0, err
    earlier = json.loads((runs / "selective_copy_mamba_S6" / "metrics.json").read_text())
    code, _, err = run(["synthetic", "table", "--out", str(tmp_path / "results"), "--runs", str(runs), "--reuse",
                        "--device", "cpu"], capsys)
    assert code == 0, err
    assert "reused" in err and err.count("reused") == 1
    report = json.loads((tmp_path / "results" / "synthetic_tiny.json").read_text())
    row = next(r for r in report["selective_copying"] if (r["arch"], r["layer"]) == ("mamba", "S6"))
    assert (row["steps"], row["accuracy"]) == (1, earlier["accuracy"])  # the table's own runs take 2 steps
    assert all(r["steps"] == 2 for r in report["selective_copying"] if r is not row)


def test_table_reuse_refuses_a_run_of_other_settings(micro_presets, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    code, _, err = run(["synthetic", "selective-copy", "--out", str(runs / "selective_copy_mamba_S6"), "--device",
                        "cpu", "--max-steps", "1"], capsys)
    assert code == 0, err
    monkeypatch.setitem(micro_presets, "selective-copy", replace(micro_presets["selective-copy"], batch_size=8))
    code, _, err = run(["synthetic", "table", "--out", str(tmp_path / "results"), "--runs", str(runs), "--reuse",
                        "--device", "cpu"], capsys)
    assert code == 2 and "other settings" in err and len(err.strip().splitlines()) == 1


# ---- user mistakes: one line, exit code 2 -----------------------------------------------------------------------
@pytest.mark.parametrize("args, fragment", [
    (["synthetic", "selective-copy", "--out", "r", "--layer", "S5"], "--layer"),
    (["synthetic", "selective-copy", "--out", "r", "--arch", "gated"], "--arch"),
    (["synthetic", "induction-heads", "--out", "r", "--preset", "huge"], "--preset"),
    (["synthetic", "induction-heads", "--out", "r", "--max-steps", "0"], "--max-steps"),
    (["synthetic", "selective-copy"], "--out"),
    (["synthetic", "table", "--bogus"], "No such option"),
    (["synthetic", "selective-copy", "--out", "r", "--config", "/no/such.yaml"], "no such file"),
])
def test_bad_flags_exit_2(args, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(args, capsys)
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_missing_gpu_is_a_one_line_error(capsys, tmp_path, micro_presets):
    for args in (["synthetic", "table", "--out", str(tmp_path), "--device", "cuda"],
                 ["synthetic", "selective-copy", "--out", str(tmp_path / "r"), "--device", "cuda"]):
        code, _, err = run(args, capsys)
        assert code == 2 and "cuda" in err and len(err.strip().splitlines()) == 1, err


def test_table_under_a_time_limit_writes_what_finished(micro_presets, tmp_path, capsys):
    # A limit too short for anything: every row is marked, and the report is still written.
    code, stdout, err = run(["synthetic", "table", "--out", str(tmp_path / "results"), "--runs",
                             str(tmp_path / "runs"), "--device", "cpu", "--max-minutes", "0.0001"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "results" / "synthetic_tiny.json").read_text())
    assert all(r["status"] == "not run (time limit)" and r["accuracy"] is None for r in report["selective_copying"])
    assert report["induction_heads"]["status"] == "not run (time limit)"
    assert all(r["accuracy"] is None for r in report["induction_heads"]["lengths"])
    md = (tmp_path / "results" / "synthetic_tiny.md").read_text()
    assert "not run (time limit)" in md and "2^5" in md
    assert not (tmp_path / "results" / "synthetic_tiny.png").exists()


def test_table_rows_say_how_each_run_ended(micro_presets, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(micro_presets, "selective-copy",
                        replace(micro_presets["selective-copy"], target_accuracy=0.0, val_every=1))
    code, stdout, err = run(["synthetic", "table", "--out", str(tmp_path / "results"), "--runs",
                             str(tmp_path / "runs"), "--device", "cpu", "--max-minutes", "30"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "results" / "synthetic_tiny.json").read_text())
    assert {r["status"] for r in report["selective_copying"]} == {"reached target at step 1"}
    assert report["induction_heads"]["status"] == "done"
    assert report["max_minutes"] == 30 and "2312.00752" in report["paper_source"]


def test_init_from_continues_a_run_and_the_table_counts_both(micro_presets, tmp_path, capsys):
    runs = tmp_path / "runs"
    first, second = runs / "first", runs / "induction_heads_mamba_S6"
    code, _, err = run(["synthetic", "induction-heads", "--out", str(first), "--device", "cpu", "--max-steps", "2"],
                       capsys)
    assert code == 0, err
    code, _, err = run(["synthetic", "induction-heads", "--out", str(second), "--device", "cpu", "--max-steps", "3",
                        "--lr", "5e-4", "--min-lr-ratio", "0.01", "--init-from", str(first / "model")], capsys)
    assert code == 0, err
    m = json.loads((second / "metrics.json").read_text())
    assert (m["prior_steps"], m["steps"]) == (2, 3)
    assert m["history"] == [{"steps": 2, "lr": 1e-3},
                            {"steps": 3, "lr": 5e-4, "warmup": 0.0, "min_lr_ratio": 0.01, "schedule_steps": 3}]
    code, _, err = run(["synthetic", "table", "--out", str(tmp_path / "results"), "--runs", str(runs), "--reuse",
                        "--device", "cpu"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "results" / "synthetic_tiny.json").read_text())
    assert report["induction_heads"]["steps"] == 5
    assert "2 steps at lr 0.001, then 3 at lr 0.0005 (cosine to 0.01x over 3 steps)" in (tmp_path / "results" / "synthetic_tiny.md").read_text()


def test_resume_of_a_continued_run_keeps_its_donor_history_and_data_position(micro_presets, tmp_path, capsys,
                                                                             monkeypatch):
    """A run started with --init-from and resumed later: the donor is neither read nor needed (it may be gone), the
    history and prior_steps stay the first part's, and the data stream goes on after the donor's batches (before
    the fix the resume forgot the donor and restarted the stream at the donor's first batch)."""
    import shutil

    from mamba_bio_audio.tasks import synthetic

    donor, out = tmp_path / "donor", tmp_path / "run"
    code, _, err = run(["synthetic", "induction-heads", "--out", str(donor), "--device", "cpu", "--max-steps", "2"],
                       capsys)
    assert code == 0, err
    code, _, err = run(["synthetic", "induction-heads", "--out", str(out), "--device", "cpu", "--max-steps", "2",
                        "--init-from", str(donor / "model")], capsys)
    assert code == 0, err
    shutil.rmtree(donor)
    batch = micro_presets["induction-heads"].batch_size
    seen = []
    fresh = synthetic._train_sample_fn

    def recording(*args):
        sample = fresh(*args)

        def sample_fn(i):
            seen.append(i)
            return sample(i)
        return sample_fn

    monkeypatch.setattr(synthetic, "_train_sample_fn", recording)
    code, _, err = run(["synthetic", "induction-heads", "--out", str(out), "--device", "cpu", "--resume",
                        "--max-steps", "3"], capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert (m["prior_steps"], m["steps"], m["resumed_at"]) == (2, 3, 2)
    assert m["init_from"] == str(donor / "model") and m["history"][0] == {"steps": 2, "lr": 1e-3}
    assert min(seen) == (2 + 2) * batch  # the donor's 2 steps, then this run's 2 steps before the resume


def test_resume_of_a_continued_run_from_before_config_kept_the_history(micro_presets, tmp_path, capsys):
    """A run whose config.yaml predates ``prior_history``: the resume reads the donor's own record, and a donor
    that is gone is one line (nothing else records the training behind it)."""
    import shutil

    import yaml

    donor, out = tmp_path / "donor", tmp_path / "run"
    for args in (["--out", str(donor), "--max-steps", "2"],
                 ["--out", str(out), "--max-steps", "2", "--init-from", str(donor / "model")]):
        code, _, err = run(["synthetic", "induction-heads", "--device", "cpu", *args], capsys)
        assert code == 0, err
    config = yaml.safe_load((out / "config.yaml").read_text())
    del config["prior_history"]
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run(["synthetic", "induction-heads", "--out", str(out), "--device", "cpu", "--resume",
                        "--max-steps", "3"], capsys)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["prior_steps"] == 2
    config = yaml.safe_load((out / "config.yaml").read_text())  # the resume recorded the history: take it out again
    assert config.pop("prior_history") == [{"steps": 2, "lr": 1e-3}]
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.rmtree(donor)
    code, _, err = run(["synthetic", "induction-heads", "--out", str(out), "--device", "cpu", "--resume",
                        "--max-steps", "4"], capsys)
    assert_one_line_error(code, err, "--init-from", "is gone", "start a new --out")


def test_restore_best_tests_the_best_validated_weights(micro_presets, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(micro_presets, "induction-heads",
                        replace(micro_presets["induction-heads"], val_every=1, max_steps=3))
    code, out, err = run(["synthetic", "induction-heads", "--out", str(tmp_path / "a"), "--device", "cpu",
                          "--restore-best"], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    best = max(m["val_history"], key=lambda h: (h["accuracy"], -h["loss"]))
    assert m["steps"] == 3 and len(m["val_history"]) == 3 and m["selected_step"] == best["step"]
    assert m["history"][-1]["selected_step"] == best["step"] and "the best validation" in out


def test_resume_continues_the_run_in_out(micro_presets, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(["synthetic", "induction-heads", "--out", str(out), "--device", "cpu"], capsys)
    assert code == 0, err
    first = json.loads((out / "metrics.json").read_text())["steps"]
    code, _, err = run(["synthetic", "induction-heads", "--out", str(out), "--device", "cpu", "--resume",
                        "--max-steps", str(first + 2)], capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert (m["steps"], m["resumed_at"]) == (first + 2, first)
    code, _, err = run(["synthetic", "induction-heads", "--out", str(tmp_path / "empty"), "--device", "cpu",
                        "--resume"], capsys)
    assert_one_line_error(code, err, "no checkpoint to resume from")
    # nothing left to train: a no-op that says so (Lightning trains no step; the run is saved as it was)
    code, _, err = run(["synthetic", "induction-heads", "--out", str(out), "--device", "cpu", "--resume",
                        "--max-steps", str(first + 1)], capsys)
    assert code == 0, err
    assert f"already at step {first + 2}, at or past --max-steps {first + 1}: nothing to train" in err
    assert json.loads((out / "metrics.json").read_text())["steps"] == first + 2
    code, _, err = run(["synthetic", "induction-heads", "--out", str(out), "--device", "cpu", "--resume",
                        "--init-from", str(out / "model")], capsys)
    assert_one_line_error(code, err, "cannot be combined with --init-from")


def test_resume_counts_the_earlier_parts_training_time_in_max_minutes(micro_presets, tmp_path, capsys):
    """--max-minutes is the whole run's budget, as for every training command: a resumed run whose earlier part
    already trained for longer stops at its first step (before the fix its budget started again in full)."""
    out = tmp_path / "run"
    code, _, err = run(["synthetic", "induction-heads", "--out", str(out), "--device", "cpu", "--max-steps", "2"],
                       capsys)
    assert code == 0, err
    ckpt = out / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert 0 < state["callbacks"]["StopTraining"]["elapsed"] < 600  # the first part's training time, kept
    state["callbacks"]["StopTraining"]["elapsed"] = 3600.0  # as if it had trained for an hour
    torch.save(state, ckpt)
    code, _, err = run(["synthetic", "induction-heads", "--out", str(out), "--device", "cpu", "--resume",
                        "--max-steps", "40", "--max-minutes", "30"], capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped"] == "time" and m["steps"] == 3  # one step past the resume point, not 40


def test_init_from_a_model_of_another_task_is_a_one_line_error(micro_presets, tmp_path, capsys):
    code, _, err = run(["synthetic", "selective-copy", "--out", str(tmp_path / "sc"), "--device", "cpu",
                        "--max-steps", "1"], capsys)
    assert code == 0, err
    code, _, err = run(["synthetic", "induction-heads", "--out", str(tmp_path / "ih"), "--device", "cpu",
                        "--max-steps", "1", "--init-from", str(tmp_path / "sc" / "model")], capsys)
    assert code == 2 and "another configuration" in err and len(err.strip().splitlines()) == 1


def test_no_early_stop_trains_past_the_target(micro_presets, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(micro_presets, "induction-heads",
                        replace(micro_presets["induction-heads"], target_accuracy=0.0, val_every=1, max_steps=3))
    code, _, err = run(["synthetic", "induction-heads", "--out", str(tmp_path / "a"), "--device", "cpu"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["steps"] == 1  # stopped at the target
    code, _, err = run(["synthetic", "induction-heads", "--out", str(tmp_path / "b"), "--device", "cpu",
                        "--no-early-stop"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["steps"] == 3


def test_precision_and_val_batch_size_reach_the_trainer(micro_presets, tmp_path, capsys, monkeypatch):
    import mamba_bio_audio.training.trainer as trainer

    seen, real_fit = {}, trainer.fit

    def recording_fit(task, data, out, cfg, **kwargs):
        seen.update(precision=cfg.precision, val_batch_size=data.val_batch_size)
        return real_fit(task, data, out, cfg, **kwargs)

    monkeypatch.setattr(trainer, "fit", recording_fit)
    monkeypatch.setitem(micro_presets, "induction-heads",
                        replace(micro_presets["induction-heads"], val_every=1, max_steps=2))
    code, _, err = run(["synthetic", "induction-heads", "--out", str(tmp_path / "a"), "--device", "cpu",
                        "--precision", "32-true", "--val-batch-size", "3"], capsys)
    assert code == 0, err
    assert seen == {"precision": "32-true", "val_batch_size": 3}
    assert "precision: 32-true" in (tmp_path / "a" / "config.yaml").read_text()
    code, _, err = run(["synthetic", "induction-heads", "--out", str(tmp_path / "b"), "--precision", "fp8"], capsys)
    assert code == 2 and "--precision" in err


def test_evaluate_command_writes_the_report(tmp_path, capsys):
    from mamba_bio_audio import MambaConfig, MambaLM

    MambaLM(MambaConfig(d_model=16, n_layer=1, d_state=4, vocab_size=16)).save_pretrained(tmp_path / "model")
    code, stdout, err = run(["synthetic", "evaluate", str(tmp_path / "model"), "--out", str(tmp_path / "ev"),
                             "--log2-lengths", "5", "--samples", "4", "--device", "cpu"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "induction_eval.json").read_text())
    assert [r["seqlen"] for r in report["lengths"]] == [32] and report["test_indices"] == [128, 132]
    assert "induction_eval.json" in stdout
    code, _, err = run(["synthetic", "evaluate", str(tmp_path / "nothing"), "--out", str(tmp_path / "ev2")], capsys)
    assert code == 2 and "not a saved model folder" in err and len(err.strip().splitlines()) == 1
