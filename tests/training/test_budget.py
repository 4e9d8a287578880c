"""The wall-clock budget: planned steps from a measured step time, the stop at the first step past the budget,
its state across a resume, and what species train writes when the budget cuts a run."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from mamba_bio_audio.cli import cli
from mamba_bio_audio.training.budget import PLANNED_SHARE, WallClockBudget, planned_steps, seconds_per_step

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_species_store(tmp_path_factory):
    from mamba_bio_audio.data_prep.dna.store import prepare_genomes
    from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes

    work = tmp_path_factory.mktemp("budget")
    write_synthetic_genomes(work / "genomes", n_species=2, strains=3, length=2_000, seed=0)
    return prepare_genomes(work / "genomes", work / "store", "strain", seed=0)


class _Trainer:
    def __init__(self):
        self.global_step = 0
        self.world_size = 1
        self.should_stop = False


def test_planned_steps_fill_the_planned_share_of_the_budget():
    assert planned_steps(100.0, 1.0) == int(PLANNED_SHARE * 100)
    assert planned_steps(1.0, 10.0) == 1  # at least one step


def test_budget_stops_at_the_first_step_boundary_past_it(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("mamba_bio_audio.training.budget.time.monotonic", lambda: clock[0])
    budget, trainer = WallClockBudget(10.0), _Trainer()
    budget.on_train_start(trainer, None)
    trainer.global_step, clock[0] = 1, 1005.0
    budget.on_train_batch_end(trainer, None, None, None, 0)
    assert not trainer.should_stop and not budget.cut
    clock[0] = 1011.0  # past the budget, but still inside gradient accumulation (the step did not advance)
    budget.on_train_batch_end(trainer, None, None, None, 1)
    assert not trainer.should_stop
    trainer.global_step = 2
    budget.on_train_batch_end(trainer, None, None, None, 2)
    assert trainer.should_stop and budget.cut


def test_a_resumed_run_counts_the_time_of_its_earlier_part(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("mamba_bio_audio.training.budget.time.monotonic", lambda: clock[0])
    first = WallClockBudget(60.0)
    first.on_train_start(_Trainer(), None)
    clock[0] = 45.0
    state = first.state_dict()
    assert state == {"elapsed": 45.0}
    second = WallClockBudget(60.0)
    second.load_state_dict(state)
    second.on_train_start(_Trainer(), None)
    clock[0] = 60.0
    assert second.elapsed() == pytest.approx(60.0)


def test_budget_must_be_positive():
    with pytest.raises(ValueError):
        WallClockBudget(0)


def test_seconds_per_step_times_a_copy_and_leaves_the_task_untouched(tiny_species_store):
    from mamba_bio_audio.tasks.species import SpeciesSettings, plan_training

    plan = plan_training(tiny_species_store, SpeciesSettings(length=64, max_steps=5, batch_size=2, device="cpu"))
    before = {k: v.clone() for k, v in plan.model.state_dict().items()}
    seconds = seconds_per_step(plan.task, plan.datamodule, torch.device("cpu"), steps=1, warmup=1)
    assert 0 < seconds < 60
    assert all(torch.equal(before[k], v) for k, v in plan.model.state_dict().items())


class _SpyTask(torch.nn.Module):
    """A one-layer task that records, at each loss, the CPU autocast state, its weight's and its input's dtype (in
    a class attribute: the probe trains a deep copy)."""

    seen: list = []

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def compute_loss(self, batch):
        enabled = torch.is_autocast_enabled("cpu")
        self.seen.append((enabled, torch.get_autocast_dtype("cpu") if enabled else None, self.layer.weight.dtype,
                          batch["x"].dtype))
        return self.layer(batch["x"]).float().square().mean(), {}


class _SpyData:
    def train_dataloader(self):
        return ({"x": torch.ones(2, 4)} for _ in range(100))

    def on_after_batch_transfer(self, batch, dataloader_idx):
        return batch


@pytest.mark.parametrize(("precision", "expected"), [
    (None, (False, None, torch.float32, torch.float32)),  # the CPU default: fp32, as training runs
    ("32-true", (False, None, torch.float32, torch.float32)),
    ("32", (False, None, torch.float32, torch.float32)),
    ("bf16-mixed", (True, torch.bfloat16, torch.float32, torch.float32)),
    ("bf16", (True, torch.bfloat16, torch.float32, torch.float32)),
    ("bf16-true", (False, None, torch.bfloat16, torch.bfloat16)),
    ("64-true", (False, None, torch.float64, torch.float64)),
])
def test_the_step_time_probe_runs_at_the_runs_precision(precision, expected, monkeypatch):
    seen = []
    monkeypatch.setattr(_SpyTask, "seen", seen)
    task = _SpyTask()
    seconds = seconds_per_step(task, _SpyData(), torch.device("cpu"), precision=precision, steps=1, warmup=1)
    assert seconds > 0 and seen and all(s == expected for s in seen)
    assert task.layer.weight.dtype == torch.float32 and torch.get_default_dtype() == torch.float32


def test_probe_precision_on_cuda_and_unknown_names():
    from mamba_bio_audio.training.budget import probe_precision

    cuda = torch.device("cuda")
    assert probe_precision(None, cuda) == (torch.bfloat16, None)  # the GPU default: bf16-mixed
    assert probe_precision("16-mixed", cuda) == (torch.float16, None)
    assert probe_precision("32-true", cuda) == (None, None)
    assert probe_precision("16-true", cuda) == (None, torch.float16)
    with pytest.raises(ValueError):
        probe_precision("8-mixed", cuda)


def test_audio_training_times_its_steps_at_its_precision(monkeypatch, tmp_path):
    from mamba_bio_audio.tasks.audio_lm import AudioTrainSettings, fit_audio_lm

    class Planned(Exception):
        pass

    def spy(task, datamodule, device, **kwargs):
        raise Planned(kwargs.get("precision"))

    monkeypatch.setattr("mamba_bio_audio.training.budget.seconds_per_step", spy)
    settings = AudioTrainSettings(max_minutes=1.0, precision="bf16-mixed", device="cpu")
    with pytest.raises(Planned, match="bf16-mixed"):
        fit_audio_lm(None, None, tmp_path, settings, task_class=lambda model, optim: None)


def test_species_train_with_a_budget_plans_steps_and_says_when_the_budget_cut_it(tiny_species_store, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["species", "train", "--data", str(tiny_species_store), "--out", str(out),
                                      "--preset", "tiny", "--length", "64", "--batch-size", "2",
                                      "--max-minutes", "0.01",
                                      "--val-per-species", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["max_minutes"] == 0.01
    assert metrics["measured_seconds_per_step"] > 0
    assert metrics["max_steps"] >= 1 and 1 <= metrics["steps"] <= metrics["max_steps"]
    assert metrics["budget_cut"] or metrics["steps"] == metrics["max_steps"]
    assert metrics.get("stopped_by") == ("max_minutes" if metrics["budget_cut"] else None)
    assert (out / "model" / "config.json").is_file()


def test_planned_max_steps_reads_the_steps_a_run_was_planned_with(tiny_species_store, tmp_path):
    from mamba_bio_audio.training.budget import planned_max_steps

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["species", "train", "--data", str(tiny_species_store), "--out", str(out),
                                      "--preset", "tiny", "--length", "64", "--batch-size", "2", "--max-steps", "2",
                                      "--val-per-species", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert planned_max_steps(out / "checkpoints" / "last.ckpt") == 2
    assert planned_max_steps(tmp_path / "nothing.ckpt") is None
