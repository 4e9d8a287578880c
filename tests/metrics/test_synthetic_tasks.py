"""The synthetic tasks' generators (answers recoverable, positions varying, deterministic), the no-gate model,
the masked loss, evaluation at several lengths under a memory budget (segments with carried states, a deadline),
and the early stop."""

from __future__ import annotations

import time

import pytest
import torch

from mamba_bio_audio import MambaConfig, MambaLM
from mamba_bio_audio.data_prep.synthetic_tasks import IGNORE_INDEX, InductionHeads, SelectiveCopying
from mamba_bio_audio.metrics.synthetic import (
    answer_logits,
    evaluate_accuracy,
    evaluate_lengths,
    forward_bytes_per_token,
)
from mamba_bio_audio.models.ssm_only import SSMOnlyLM
from mamba_bio_audio.training.synthetic_task import LengthCurriculum, StopTraining, masked_loss_and_counts


# ---- oracles: read the answer off the input alone ----------------------------------------------------------------
def solve_selective_copy(input_ids: torch.Tensor, noise: int, marker: int) -> list[int]:
    """The data tokens (neither noise nor marker), in order of appearance."""
    return [t for t in input_ids.tolist() if t not in (noise, marker)]


def solve_induction(input_ids: torch.Tensor, special: int) -> int:
    """The token right after the first special token."""
    first = input_ids.tolist().index(special)
    return int(input_ids[first + 1])


# ---- selective copying ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seqlen, n_memorize, n_data", [(4096, 16, 16), (32, 4, 8), (8, 4, 2)])
def test_selective_copy_answers_are_recoverable(seqlen, n_memorize, n_data):
    task = SelectiveCopying(seqlen=seqlen, n_memorize=n_memorize, n_data_tokens=n_data, seed=3)
    assert task.vocab_size == n_data + 2
    for i in range(20):
        s = task.sample(i)
        ids, targets = s["input_ids"], s["targets"]
        assert ids.shape == targets.shape == (seqlen,) and ids.dtype == targets.dtype == torch.int64
        assert 0 <= int(ids.min()) and int(ids.max()) < task.vocab_size
        answers = targets[targets != IGNORE_INDEX]
        assert answers.tolist() == solve_selective_copy(ids, task.noise_token, task.marker_token)
        # the answers are asked at the markers, which close the sequence; nothing else is scored
        assert (ids[-n_memorize:] == task.marker_token).all()
        assert (targets[:-n_memorize] == IGNORE_INDEX).all() and len(answers) == n_memorize
        assert int((ids[:-n_memorize] == task.marker_token).sum()) == 0


def test_selective_copy_positions_vary_and_samples_are_deterministic():
    task = SelectiveCopying(seqlen=256, n_memorize=16, seed=0)
    position_sets = {tuple((task.sample(i)["input_ids"][:-16] != task.noise_token).nonzero().flatten().tolist())
                     for i in range(50)}
    assert len(position_sets) == 50
    first_positions = {p[0] for p in position_sets}
    assert len(first_positions) > 5  # not a fixed delay
    again = SelectiveCopying(seqlen=256, n_memorize=16, seed=0)
    for i in (0, 7, 10**12):
        assert torch.equal(task.sample(i)["input_ids"], again.sample(i)["input_ids"])
        assert torch.equal(task.sample(i)["targets"], again.sample(i)["targets"])
    other_seed = SelectiveCopying(seqlen=256, n_memorize=16, seed=1)
    assert not torch.equal(task.sample(0)["input_ids"], other_seed.sample(0)["input_ids"])
    assert not torch.equal(task.sample(0)["input_ids"], task.sample(1)["input_ids"])


def test_selective_copy_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="no room"):
        SelectiveCopying(seqlen=20, n_memorize=16)
    with pytest.raises(ValueError, match=">= 0"):
        SelectiveCopying(seqlen=32, n_memorize=4).sample(-1)


# ---- induction heads --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seqlen", [3, 64, 256, 2**14])
def test_induction_answer_is_recoverable(seqlen):
    task = InductionHeads(seqlen=seqlen, seed=5)
    assert task.vocab_size == 17
    for i in range(20):
        s = task.sample(i)
        ids, targets = s["input_ids"], s["targets"]
        assert ids.shape == targets.shape == (seqlen,)
        assert int(ids[-1]) == task.special_token
        assert int((ids == task.special_token).sum()) == 2  # the cue and the final query, nowhere else
        assert (targets[:-1] == IGNORE_INDEX).all()
        assert int(targets[-1]) == solve_induction(ids, task.special_token)
        assert 0 <= int(targets[-1]) < task.n_tokens


def test_induction_cue_positions_vary_and_samples_are_deterministic():
    task = InductionHeads(seqlen=256, seed=0)
    cues = {task.sample(i)["input_ids"].tolist().index(task.special_token) for i in range(50)}
    assert len(cues) > 25
    assert {int(task.sample(i)["targets"][-1]) for i in range(200)} == set(range(16))
    assert torch.equal(task.sample(9)["input_ids"], InductionHeads(seqlen=256, seed=0).sample(9)["input_ids"])
    assert not torch.equal(task.sample(9)["input_ids"], InductionHeads(seqlen=256, seed=1).sample(9)["input_ids"])
    with pytest.raises(ValueError, match=">= 3"):
        InductionHeads(seqlen=2)


# ---- the no-gate model ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", ["S6", "S4D"])
def test_no_gate_model_has_no_conv_or_gate_and_steps_like_forward(layer, tmp_path):
    torch.manual_seed(0)
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=18, d_state=4, ssm_layer=layer)
    model = SSMOnlyLM(config).double()
    names = [n for n, _ in model.named_parameters()]
    assert not any("conv1d" in n for n in names)
    mixer = model.backbone.layers[0].mixer
    assert mixer.in_proj.out_features == config.d_inner  # x only: no z branch for a gate
    assert ("x_proj" in "".join(names)) == (layer == "S6")
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in MambaLM(config).parameters())

    ids = torch.randint(0, 18, (2, 12))
    logits = model(ids)
    assert logits.shape == (2, 12, 18)
    states = model.allocate_inference_cache(2, dtype=torch.float64)
    stepped = torch.stack([model.step(ids[:, t], states) for t in range(12)], dim=1)
    torch.testing.assert_close(stepped, logits, rtol=1e-10, atol=1e-10)

    model.save_pretrained(tmp_path / "m")
    again = SSMOnlyLM.from_pretrained(tmp_path / "m").double()
    torch.testing.assert_close(again(ids), logits)


# ---- loss and evaluation ----------------------------------------------------------------------------------------
def test_masked_loss_counts_only_answers():
    logits = torch.full((2, 4, 5), -10.0)
    logits[0, 3, 2] = 10.0  # right
    logits[1, 3, 4] = 10.0  # wrong (target 1)
    logits[1, 0, 0] = 10.0  # an unscored position
    targets = torch.full((2, 4), IGNORE_INDEX)
    targets[0, 3], targets[1, 3] = 2, 1
    loss, correct, count = masked_loss_and_counts(logits, targets)
    assert int(correct) == 1 and int(count) == 2
    assert 9 < float(loss) < 11  # ~0 for the right answer, ~20 for the wrong one


def _tiny_model(vocab: int) -> MambaLM:
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=vocab, d_state=4))


def test_evaluate_accuracy_scores_every_answer_and_leaves_mode():
    task = SelectiveCopying(seqlen=16, n_memorize=4, n_data_tokens=4)
    model = _tiny_model(task.vocab_size).train()
    scores = evaluate_accuracy(model, task.sample, n_samples=10, batch_size=4)
    assert scores["answers"] == 40 and 0.0 <= scores["accuracy"] <= 1.0 and scores["loss"] > 0
    assert model.training


def test_evaluate_lengths_skips_what_does_not_fit():
    model = _tiny_model(17)
    per_token = forward_bytes_per_token(model)
    lines = []
    results = evaluate_lengths(model, lambda n, i: InductionHeads(seqlen=n).sample(i), [16, 64, 1024],
                               n_samples=6, memory_budget=per_token * 100, progress=lines.append)
    assert [r.seqlen for r in results] == [16, 64, 1024]
    assert results[0].batch_size == 6 and results[1].batch_size == 1  # 100 positions: six of 16, one of 64
    assert results[0].accuracy is not None and results[1].accuracy is not None
    assert results[2].accuracy is None and "budget" in results[2].skipped
    assert len(lines) == 3 and "skipped" in lines[2]


# ---- segmented evaluation: long sequences in segments with carried states ------------------------------------------
@pytest.mark.parametrize("model_cls, layer", [(MambaLM, "S6"), (SSMOnlyLM, "S6"), (SSMOnlyLM, "S4D")])
def test_answer_logits_in_segments_equal_one_pass(model_cls, layer):
    torch.manual_seed(0)
    model = model_cls(MambaConfig(d_model=16, n_layer=2, vocab_size=17, d_state=4, ssm_layer=layer)).double()
    ids = torch.randint(0, 17, (3, 50))
    whole = model(ids, num_last_tokens=7)
    for segment in (8, 16, 49):  # segments that do and do not divide the length; the span crosses a boundary
        torch.testing.assert_close(answer_logits(model, ids, 7, segment_len=segment), whole, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(answer_logits(model, ids, 7, segment_len=64), whole)  # one segment: one pass


def test_evaluate_lengths_in_segments_fits_what_one_pass_does_not():
    model = _tiny_model(17).double()
    per_token = forward_bytes_per_token(model)
    sample = lambda n, i: InductionHeads(seqlen=n).sample(i)  # noqa: E731
    budget = per_token * 100
    one_pass = evaluate_lengths(model, sample, [16, 256], n_samples=4, memory_budget=budget, segment_len=None)
    assert one_pass[1].accuracy is None and "budget" in one_pass[1].skipped
    segmented = evaluate_lengths(model, sample, [16, 256], n_samples=4, memory_budget=budget, segment_len=32)
    assert segmented[1].accuracy is not None and segmented[1].batch_size >= 1
    reference = evaluate_accuracy(model, lambda i: sample(256, i), n_samples=4, batch_size=4)
    assert segmented[1].accuracy == reference["accuracy"]
    scored = evaluate_accuracy(model, lambda i: sample(256, i), n_samples=4, batch_size=4, segment_len=32)
    assert scored["loss"] == pytest.approx(reference["loss"], rel=1e-9)


def test_evaluate_lengths_skips_lengths_after_the_deadline():
    model = _tiny_model(17)
    lines = []
    results = evaluate_lengths(model, lambda n, i: InductionHeads(seqlen=n).sample(i), [16, 32], n_samples=2,
                               deadline=time.monotonic() - 1, progress=lines.append)
    assert all(r.accuracy is None and r.skipped.startswith("time budget") for r in results)
    assert "skipped" in lines[0]


# ---- stopping a run early ---------------------------------------------------------------------------------------
class _FakeTrainer:
    def __init__(self, metrics: dict, step: int = 10):
        self.callback_metrics = metrics
        self.sanity_checking = False
        self.global_step = step
        self.should_stop = False


def test_stop_training_at_target_accuracy_and_deadline():
    stop = StopTraining(target_accuracy=0.99)
    low, high = _FakeTrainer({"val/accuracy": torch.tensor(0.5)}), _FakeTrainer({"val/accuracy": torch.tensor(1.0)}, 40)
    stop.on_validation_end(low, None)
    assert not low.should_stop and stop.reason is None and stop.best == 0.5
    stop.on_train_batch_end(low)  # no deadline: nothing happens
    assert not low.should_stop
    stop.on_validation_end(high, None)
    assert high.should_stop and stop.reason == "target" and stop.reached_at == 40 and stop.best == 1.0

    timed = StopTraining(deadline=time.monotonic() - 1)
    trainer = _FakeTrainer({})
    timed.on_validation_end(trainer, None)  # no metric yet: ignored
    timed.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.should_stop and timed.reason == "time" and timed.reached_at is None

    last = StopTraining(deadline=time.monotonic() - 1)
    trainer = _FakeTrainer({}, step=10)
    trainer.max_steps = 10
    last.on_train_batch_end(trainer)  # the deadline passed at the last step: the run is complete, not cut
    assert not trainer.should_stop and last.reason is None


def test_stop_training_keeps_the_best_validated_weights():
    # Highest accuracy wins; among equal accuracies the lowest loss; the copy is of the weights at that step.
    module = torch.nn.Module()
    module.model = torch.nn.Linear(2, 1)
    stop = StopTraining(keep_best=True)
    for step, acc, loss in [(10, 0.5, 1.0), (20, 1.0, 0.3), (30, 1.0, 0.1), (40, 1.0, 0.2), (50, 0.9, 0.01)]:
        with torch.no_grad():
            module.model.weight.fill_(step)
        stop.on_validation_end(_FakeTrainer({"val/accuracy": torch.tensor(acc), "val/loss": torch.tensor(loss)},
                                            step), module)
    assert stop.best_step == 30 and stop.reason is None
    assert torch.equal(stop.best_state["weight"], torch.full((1, 2), 30.0))
    assert [h["step"] for h in stop.history] == [10, 20, 30, 40, 50] and stop.history[2]["loss"] == pytest.approx(0.1)
    assert StopTraining().best_state is None  # keep_best off: nothing copied


def test_length_curriculum_moves_on_at_its_cap_or_when_learned():
    capped = LengthCurriculum(((16, 5), (32, 5)), final_len=64)
    assert [capped.seqlen_at(s) for s in (0, 4, 5, 9, 10, 10**6)] == [16, 16, 32, 32, 64, 64]
    for step in range(1, 12):
        capped.on_train_batch_end(_FakeTrainer({}, step), None)
    assert capped.starts == [0, 5, 10]

    early = LengthCurriculum(((16, 1000), (32, 1000)), final_len=64, advance_at=0.99, check_every=10, checks=2, lag=2)
    for step, accuracy in ((10, 0.995), (20, 0.5), (30, 1.0), (40, 1.0)):
        early.on_train_batch_end(_FakeTrainer({"train/accuracy": torch.tensor(accuracy)}, step), None)
    assert early.starts == [0, 42]  # two good checks in a row (30, 40), effective two steps later
    assert [early.seqlen_at(s) for s in (41, 42, 1041, 1042)] == [16, 32, 32, 64]
    early.on_train_batch_end(_FakeTrainer({"train/accuracy": torch.tensor(1.0)}, 50), None)  # one check at 32
    assert early.starts == [0, 42]
    with pytest.raises(ValueError, match="max_steps >= 1"):
        LengthCurriculum(((16, 0),), final_len=32)


def test_length_curriculum_moves_on_at_its_time_cap():
    timed = LengthCurriculum(((16, 1000), (32, 1000)), final_len=64, time_caps=[time.monotonic() - 1, 1e18])
    for step in (1, 2, 3, 4):
        timed.on_train_batch_end(_FakeTrainer({}, step), None)
    assert timed.starts == [0, 3]  # out of time at step 1: the next stage from step 3, scheduled once
    assert [timed.seqlen_at(s) for s in (2, 3, 1002, 1003)] == [16, 32, 32, 64]
