"""Exact validation metrics under several processes: every validation batch counted once, batches weighted by their
samples (or predicted tokens), padding repeats weighted 0; and a one-process run logs what it logged before."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
from torch.utils.data import DataLoader

from mamba_bio_audio.tasks.audio_folder import MaskedLMTask as AudioLMTask
from mamba_bio_audio.training.data import (
    IndexedDataModule,
    SampleBatches,
    padded_val_loader,
    val_batch_position,
)
from mamba_bio_audio.training.mlm import MLMTask
from mamba_bio_audio.training.module import ClassificationTask, LMTask, OptimConfig, next_token_count
from mamba_bio_audio.training.synthetic_task import MaskedLMTask as AnswersTask

V = 7


class ToyLM(nn.Module):
    """ids (batch, seqlen) -> logits (batch, seqlen, vocab); ``seq_idx`` is accepted and ignored."""

    def __init__(self, vocab: int = V):
        super().__init__()
        self.config = SimpleNamespace(bidirectional=True)
        self.emb, self.out = nn.Embedding(vocab, 8), nn.Linear(8, vocab)

    def forward(self, ids, seq_idx=None):
        return self.out(torch.tanh(self.emb(ids)))


class ToyClassifier(nn.Module):
    """ids (batch, seqlen) (+ attention_mask) -> logits (batch, 3)."""

    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(V, 8), nn.Linear(8, 3)

    def forward(self, ids, attention_mask=None):
        return self.out(torch.tanh(self.emb(ids)).mean(1))


def _task(cls, model_cls):
    torch.manual_seed(0)
    return cls(model_cls(), OptimConfig()).eval()


def _simulate(task, batches, world, lightning_sampler=False):
    """Validation of ``batches`` (ready-made) on ``world`` simulated ranks: ``({name: mean}, batches per rank)``,
    the ranks' weighted sums added as the epoch end's all-reduce adds them."""
    totals, counts = {}, []
    for rank in range(world):
        if lightning_sampler:  # the DistributedSampler Lightning puts into DataLoader(batches, batch_size=None)
            plain = DataLoader(batches, batch_size=None)
            sampler = _get_distributed_sampler(plain, shuffle=False, overfit_batches=0, num_replicas=world, rank=rank)
            loader = DataLoader(batches, batch_size=None, sampler=sampler)
        else:
            loader = padded_val_loader(batches, rank, world)
        task.val_batch_position = lambda k, d=0, loader=loader: val_batch_position(loader, k)
        task.on_validation_epoch_start()
        with torch.no_grad():
            for k, batch in enumerate(loader):
                task.validation_step(batch, k)
        counts.append(len(loader))
        for name, value in task._val_sums.items():
            totals[name] = totals.get(name, 0) + value
    return {name: float(t[0] / t[1]) for name, t in totals.items()}, counts


@pytest.mark.parametrize("n,world", [(1, 2), (5, 2), (7, 3), (8, 4), (3, 4), (6, 3)])
@pytest.mark.parametrize("lightning_sampler", [False, True])
def test_every_batch_once_and_the_same_count_on_every_rank(n, world, lightning_sampler):
    batches = [{"k": torch.tensor([k])} for k in range(n)]
    seen = []
    for rank in range(world):
        if lightning_sampler:
            sampler = _get_distributed_sampler(DataLoader(batches, batch_size=None), shuffle=False,
                                               overfit_batches=0, num_replicas=world, rank=rank)
            loader = DataLoader(batches, batch_size=None, sampler=sampler)
        else:
            loader = padded_val_loader(batches, rank, world)
        got = list(loader)
        assert len(got) == math.ceil(n / world)  # the same number of forward calls on every rank
        for k, batch in enumerate(got):
            index, repeat = val_batch_position(loader, k)
            assert int(batch["k"]) == index  # the index is the batch's place in the set (MLM seeds read it)
            if not repeat:
                seen.append(index)
    assert sorted(seen) == list(range(n))


def test_one_process_positions_and_sample_batches():
    samples = [{"x": torch.tensor([i, 2 * i])} for i in range(7)]
    batches = SampleBatches(samples, 3)
    plain = list(DataLoader(samples, batch_size=3))
    assert len(batches) == 3 and all(torch.equal(a["x"], b["x"]) for a, b in zip(batches, plain))
    loader = padded_val_loader(batches)
    assert [val_batch_position(loader, k) for k in range(3)] == [(0, False), (1, False), (2, False)]


def _classification_batches():
    g = torch.Generator().manual_seed(1)
    sizes = [5, 1, 3, 4, 2]  # unequal batches: a mean of batch means would be wrong
    return [{"input_ids": torch.randint(0, V, (b, 6), generator=g), "label": torch.randint(0, 3, (b,), generator=g)}
            for b in sizes]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("lightning_sampler", [False, True])
def test_classification_means_are_over_samples(world, lightning_sampler):
    task = _task(ClassificationTask, ToyClassifier)
    batches = _classification_batches()
    got, counts = _simulate(task, batches, world, lightning_sampler)
    everything = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    with torch.no_grad():
        loss, metrics = task.compute_loss(everything)
    assert got["val/loss"] == pytest.approx(float(loss), rel=1e-6)
    assert got["val/accuracy"] == pytest.approx(float(metrics["accuracy"]), rel=1e-6)
    assert len(set(counts)) == 1


def _masked_lm_batches():
    """Rows of 9 samples with a padding mask and packed files (seq_idx): predicted tokens differ per batch."""
    g = torch.Generator().manual_seed(2)
    batches = []
    for rows, keep in [(3, 9), (2, 4), (4, 7), (1, 2)]:
        ids = torch.randint(0, V, (rows, 9), generator=g)
        mask = torch.zeros(rows, 9, dtype=torch.bool)
        mask[:, :keep] = True
        seq_idx = torch.zeros(rows, 9, dtype=torch.int32)
        seq_idx[0, 5:] = 1
        batches.append({"input_ids": ids, "mask": mask, "seq_idx": seq_idx})
    return batches


@pytest.mark.parametrize("world", [1, 2, 3])
def test_token_losses_are_means_over_predicted_tokens(world):
    task = _task(AudioLMTask, ToyLM)  # the audio LM task: next_token_loss with seq_idx and mask
    batches = _masked_lm_batches()
    got, _ = _simulate(task, batches, world)
    with torch.no_grad():
        totals = [task.compute_loss(b)[0] * next_token_count(b["input_ids"], b["seq_idx"], b["mask"])
                  for b in batches]
    counts = [int(next_token_count(b["input_ids"], b["seq_idx"], b["mask"])) for b in batches]
    assert counts == [3 * 8 - 1, 2 * 3, 4 * 6 - 1, 1 * 1]  # a file starts at sample 5 of row 0
    exact = float(sum(totals)) / sum(counts)
    assert got["val/loss"] == pytest.approx(exact, rel=1e-6)
    assert got["val/bits_per_token"] == pytest.approx(exact / math.log(2), rel=1e-6)
    by_rows = sum(float(t) / c * b["input_ids"].shape[0] for t, c, b in zip(totals, counts, batches)) / 10
    assert abs(by_rows - exact) > 1e-3  # the weighting matters for these batches


def test_next_token_count_is_next_token_losss_count():
    from mamba_bio_audio.training.module import next_token_loss

    model = ToyLM()
    for b in _masked_lm_batches():
        for seq_idx in (None, b["seq_idx"]):
            for mask in (None, b["mask"]):
                _, count = next_token_loss(model, b["input_ids"], seq_idx, mask)
                assert int(next_token_count(b["input_ids"], seq_idx, mask)) == int(count)


@pytest.mark.parametrize("world", [2, 3])
def test_answer_tasks_weigh_by_answers(world):
    task = _task(AnswersTask, ToyLM)
    g = torch.Generator().manual_seed(3)
    batches = []
    for rows, answers in [(2, 1), (3, 4), (1, 2)]:
        ids = torch.randint(0, V, (rows, 8), generator=g)
        targets = torch.full_like(ids, -100)
        targets[:, -answers:] = torch.randint(0, V, (rows, answers), generator=g)
        batches.append({"input_ids": ids, "targets": targets})
    got, _ = _simulate(task, batches, world)
    with torch.no_grad():
        logits = [task.model(b["input_ids"]) for b in batches]
    flat_logits = torch.cat([x.reshape(-1, V) for x in logits])
    flat_targets = torch.cat([b["targets"].reshape(-1) for b in batches])
    answered = flat_targets != -100
    assert got["val/loss"] == pytest.approx(float(F.cross_entropy(flat_logits, flat_targets)), rel=1e-6)
    right = (flat_logits.argmax(-1) == flat_targets)[answered].float().mean()
    assert got["val/accuracy"] == pytest.approx(float(right), rel=1e-6)


@pytest.mark.parametrize("world", [2, 3])
def test_mlm_draws_the_same_masks_and_weighs_by_masked_positions(world):
    task = MLMTask(ToyLM(16), OptimConfig(), seed=5).eval()  # ids up to T (10), [MASK] (3) among them
    g = torch.Generator().manual_seed(4)
    batches = [{"input_ids": torch.randint(0, V, (rows, 40), generator=g)} for rows in (3, 1, 2, 2, 1)]
    one, _ = _simulate(task, batches, 1)
    several, _ = _simulate(task, batches, world)
    assert several["val/loss"] == pytest.approx(one["val/loss"], rel=1e-6)
    # one process: the masked-position-weighted mean of the batches' masked-LM losses (seeds by batch index)
    from mamba_bio_audio.training.mlm import _seed_of, mask_generator, masked_lm_loss

    totals, counts = 0.0, 0
    with torch.no_grad():
        for k, b in enumerate(batches):
            total, count = masked_lm_loss(task.model, b["input_ids"], mask_generator(torch.device("cpu"),
                                                                                    _seed_of("val", 5, k)))
            totals, counts = totals + float(total), counts + int(count)
    assert one["val/loss"] == pytest.approx(totals / counts, rel=1e-6)


# ---- one process, through Lightning: the logged values are those of before ------------------------------------------
class _OldValidation:
    """The validation before exact means: each batch's value logged with sync_dist (Lightning weighs by rows)."""

    def validation_step(self, batch, batch_idx):
        loss, metrics = self.compute_loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, sync_dist=True)


class _OldClassification(_OldValidation, ClassificationTask):
    pass


class _OldLM(_OldValidation, LMTask):
    pass


class _OldData(IndexedDataModule):
    def val_dataloader(self):
        return DataLoader(self.val_samples, batch_size=self.val_batch_size, shuffle=False)


def _validate(task, data):
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    return trainer.validate(task, datamodule=data, verbose=False)[0]


@pytest.mark.parametrize("kind", ["classification", "lm"])
def test_one_process_logs_what_it_logged_before(kind):
    g = torch.Generator().manual_seed(6)
    samples = [{"input_ids": torch.randint(0, V, (10,), generator=g), "label": torch.randint(0, 3, (), generator=g)}
               for _ in range(11)]  # batches of 4, 4, 3
    new_cls, old_cls, model = ((ClassificationTask, _OldClassification, ToyClassifier) if kind == "classification"
                               else (LMTask, _OldLM, ToyLM))
    torch.manual_seed(0)
    weights = model().state_dict()
    new, old = new_cls(model(), OptimConfig()), old_cls(model(), OptimConfig())
    new.model.load_state_dict(weights)
    old.model.load_state_dict(weights)
    got = _validate(new, IndexedDataModule(lambda i: samples[0], 4, val_samples=samples))
    before = _validate(old, _OldData(lambda i: samples[0], 4, val_samples=samples))
    assert set(got) == set(before) and "val/loss" in got
    for name in got:
        assert got[name] == pytest.approx(before[name], rel=1e-6, abs=1e-7), name
