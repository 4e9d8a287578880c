"""The synthetic tasks' callbacks keep their state in training checkpoints (loaded with weights_only, as every
checkpoint is): a resumed run continues the length curriculum where it was and keeps its validation history and
best weights, instead of starting both again."""

from __future__ import annotations

import io
from types import SimpleNamespace

import torch

from mamba_bio_audio.training.synthetic_task import LengthCurriculum, StopTraining


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_the_curriculum_continues_where_it_was():
    first = LengthCurriculum([(16, 100), (32, 100)], 64, advance_at=0.9, check_every=1, checks=2, lag=1)
    trainer = SimpleNamespace(global_step=0, callback_metrics={"train/accuracy": torch.tensor(0.95)})
    for step in range(1, 8):  # accuracy is high from the start: stage 1 begins early, then stage 2
        trainer.global_step = step
        first.on_train_batch_end(trainer, None)
    assert len(first.starts) >= 2
    resumed = LengthCurriculum([(16, 100), (32, 100)], 64, advance_at=0.9, check_every=1, checks=2, lag=1)
    resumed.load_state_dict(roundtrip(first.state_dict()))
    assert resumed.starts == first.starts
    assert [resumed.seqlen_at(s) for s in range(300)] == [first.seqlen_at(s) for s in range(300)]
    fresh = LengthCurriculum([(16, 100), (32, 100)], 64, advance_at=0.9, check_every=1, checks=2, lag=1)
    assert [fresh.seqlen_at(s) for s in range(300)] != [first.seqlen_at(s) for s in range(300)]


def test_the_history_and_best_weights_survive_a_resume():
    stop = StopTraining(target_accuracy=0.99, keep_best=True)
    model = torch.nn.Linear(2, 2)
    module = SimpleNamespace(model=model)
    for step, accuracy in ((10, 0.5), (20, 0.8), (30, 0.7)):
        trainer = SimpleNamespace(sanity_checking=False, global_step=step, should_stop=False,
                                  callback_metrics={"val/accuracy": torch.tensor(accuracy),
                                                    "val/loss": torch.tensor(1.0 - accuracy)})
        if step == 20:
            best = {k: v.clone() for k, v in model.state_dict().items()}
        stop.on_validation_end(trainer, module)
        with torch.no_grad():
            model.weight.add_(1.0)
    resumed = StopTraining(target_accuracy=0.99, keep_best=True)
    resumed.load_state_dict(roundtrip(stop.state_dict()))
    assert resumed.history == stop.history and len(resumed.history) == 3
    assert resumed.best_step == 20 and resumed.best == stop.best
    for name, value in best.items():
        assert torch.equal(resumed.best_state[name], value)
    trainer = SimpleNamespace(sanity_checking=False, global_step=40, should_stop=False,
                              callback_metrics={"val/accuracy": torch.tensor(0.75), "val/loss": torch.tensor(0.25)})
    resumed.on_validation_end(trainer, module)  # worse than step 20: the best stays
    assert resumed.best_step == 20 and resumed.reason is None
