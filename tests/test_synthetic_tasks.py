"""The synthetic tasks' generators (answers recoverable, positions varying, deterministic), the no-gate model,
the masked loss, and evaluation at several lengths under a memory budget."""

from __future__ import annotations

import pytest
import torch

from mamba_bio_audio import MambaConfig, MambaLM
from mamba_bio_audio.data_prep.synthetic_tasks import IGNORE_INDEX, InductionHeads, SelectiveCopying
from mamba_bio_audio.metrics.synthetic import evaluate_accuracy, evaluate_lengths, forward_bytes_per_token
from mamba_bio_audio.models.ssm_only import SSMOnlyLM
from mamba_bio_audio.training.synthetic_task import masked_loss_and_counts


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
