"""The training stream's position is world-wide and checkpointed: a run resumed on another number of processes (or
with another batch size or accumulation) trains on exactly the samples that follow the ones already used.

Run as a script (``python test_resume_world_size.py OUT``) it is the 2-process part of the end-to-end test: Lightning
re-runs the script in its second process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from mamba_bio_audio.training.data import IndexedDataModule, IndexedStream
from mamba_bio_audio.training.module import LMTask, OptimConfig

VOCAB, LENGTH = 6, 9


def _indices(sample):
    return {"i": torch.tensor(sample)}


def _take(dm, trainer, batches):
    """Sample indices of the first ``batches`` local batches of ``dm``'s training loader under ``trainer``."""
    dm.trainer = trainer
    it = iter(dm.train_dataloader())
    return [i for _ in range(batches) for i in next(it)["i"].tolist()]


def _train(state, start_step, steps, world, batch, accumulate):
    """Every rank's samples for ``steps`` optimizer steps from ``start_step``, resumed from datamodule ``state``
    (None: a new run, or a checkpoint without the record); returns (indices in order, the state after)."""
    seen, after = [], None
    for rank in range(world):
        dm = IndexedDataModule(_indices, batch)
        if state is not None:
            dm.load_state_dict(state)
        trainer = SimpleNamespace(global_step=start_step, accumulate_grad_batches=accumulate, world_size=world,
                                  global_rank=rank)
        seen += _take(dm, trainer, steps * accumulate)
        trainer.global_step += steps  # the optimizer steps have run
        after = after or dm.state_dict()
        assert dm.state_dict() == after  # every rank records the same position
    return sorted(seen), after


def test_resumes_continue_at_the_next_sample_whatever_the_world_size():
    seen, state = _train(None, 0, 5, world=2, batch=3, accumulate=2)
    assert seen == list(range(60)) and state == {"samples_consumed": 60}
    seen, state = _train(state, 5, 4, world=3, batch=2, accumulate=1)
    assert seen == list(range(60, 84)) and state == {"samples_consumed": 84}
    seen, state = _train(state, 9, 2, world=1, batch=5, accumulate=3)
    assert seen == list(range(84, 114)) and state == {"samples_consumed": 114}
    seen, state = _train(state, 11, 1, world=4, batch=1, accumulate=1)
    assert seen == list(range(114, 118)) and state == {"samples_consumed": 118}


def test_a_checkpoint_without_the_record_resumes_as_before():
    """global_step * accumulate * world * batch of the resumed run: right at the same world size and batch."""
    seen, state = _train(None, 7, 1, world=2, batch=3, accumulate=2)
    assert seen == list(range(7 * 2 * 2 * 3, 8 * 2 * 2 * 3)) and state == {"samples_consumed": 96}
    dm = IndexedDataModule(_indices, 4)
    assert dm.state_dict() == {}  # nothing to record before the training loader exists


def test_a_loader_built_again_in_one_fit_continues():
    dm = IndexedDataModule(_indices, 2)
    trainer = SimpleNamespace(global_step=0, accumulate_grad_batches=1, world_size=1, global_rank=0)
    assert _take(dm, trainer, 3) == list(range(6))
    trainer.global_step = 3
    assert _take(dm, trainer, 1) == [6, 7]
    other = SimpleNamespace(global_step=0, accumulate_grad_batches=1, world_size=1, global_rank=0)
    assert _take(dm, other, 1) == [0, 1]  # another fit (a new run) starts again


def test_uninterrupted_order_is_unchanged():
    """Sample i of an uninterrupted run is where it always was (benchmarks/ddp_curve.py compares runs by it)."""
    for world in (1, 2, 3):
        for rank in range(world):
            for start in (0, 4):
                it = iter(IndexedStream(_indices, 3, start, rank, world))
                got = [int(next(it)["i"]) for _ in range(9)]
                old = [((start + k) * world + rank) * 3 + j for k in range(3) for j in range(3)]
                assert got == old
                it = iter(IndexedStream(_indices, 3, rank=rank, world_size=world, start_sample=start * world * 3))
                assert [int(next(it)["i"]) for _ in range(9)] == old


# ---- end to end: 2 gloo processes, then a resume in one ----------------------------------------------------------
def _sample(i: int) -> dict:
    g = torch.Generator().manual_seed(1000 + i)
    return {"input_ids": torch.randint(0, VOCAB, (LENGTH,), generator=g), "i": torch.tensor(i)}


def _ready_batches() -> list[dict]:
    """Validation batches of 3, 1 and 2 rows, given ready-made as classify's are (DataLoader(batch_size=None))."""
    rows = [[_sample(10_000 + 10 * b + r)["input_ids"] for r in range(n)] for b, n in enumerate((3, 1, 2))]
    return [{"input_ids": torch.stack(r)} for r in rows]


class Data(IndexedDataModule):
    """Training stream of :func:`_sample`; two validation loaders: 5 samples in batches of 2 (this module's own
    loader) and :func:`_ready_batches` in a plain loader, into which Lightning puts its DistributedSampler."""

    def __init__(self, batch_size: int):
        super().__init__(_sample, batch_size, val_samples=[_sample(20_000 + i) for i in range(5)], val_batch_size=2)

    def val_dataloader(self):
        return [super().val_dataloader(), DataLoader(_ready_batches(), batch_size=None)]


class Recording(LMTask):
    """Writes the sample indices it trained on, its validation batch count and (rank 0) the last validation's
    metrics and weights, under ``out``."""

    def __init__(self, out: Path):
        import lightning.pytorch as pl

        from mamba_bio_audio import MambaConfig, MambaLM

        pl.seed_everything(0, verbose=False)
        super().__init__(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=VOCAB, d_state=4)),
                         OptimConfig(lr=1e-2, max_steps=20, warmup=2))
        self.out, self.seen, self.val_batches = Path(out), [], 0

    def training_step(self, batch, batch_idx):
        self.seen += batch["i"].tolist()
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.val_batches += 1
        super().validation_step(batch, batch_idx, dataloader_idx)

    def on_validation_end(self):
        if self.trainer.is_global_zero:
            metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
            (self.out / "val.json").write_text(json.dumps(metrics))
            torch.save(self.model.state_dict(), self.out / "val_weights.pt")

    def on_train_end(self):
        part = "resumed" if self.trainer.world_size == 1 else f"rank{self.global_rank}"
        (self.out / f"seen_{part}.json").write_text(json.dumps({"seen": self.seen, "val": self.val_batches}))


def _fit(out: Path, devices: int, batch: int, accumulate: int, steps: int, resume: bool) -> None:
    from mamba_bio_audio.training.trainer import TrainerConfig, fit

    cfg = TrainerConfig(max_steps=steps, device="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        accumulate=accumulate, checkpoint_every=0, val_every=2, progress=False, log_every=1)
    fit(Recording(out), Data(batch), out, cfg, resume=resume)


@pytest.mark.slow  # 2 gloo processes
def test_two_processes_then_one(tmp_path):
    """3 steps on 2 processes (2 samples each, accumulate 2: 24 samples), then 4 on one (3 samples): 24..35.
    Validation on 2 processes gives the one-process means of both loaders (each batch once, weighted by tokens)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"seen_rank{r}.json").read_text()) for r in range(2)]
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == list(range(24))
    assert ranks[0]["val"] == ranks[1]["val"] > 0  # the same number of validation forward calls on both ranks

    # the last validation on 2 processes = exact means over every validation sample, at the weights it ran with
    metrics = json.loads((tmp_path / "val.json").read_text())
    task = Recording(tmp_path)
    task.model.load_state_dict(torch.load(tmp_path / "val_weights.pt"))
    own = Data(2)
    own_batch = {"input_ids": torch.stack([s["input_ids"] for s in own.val_samples])}
    ready_batch = {"input_ids": torch.cat([b["input_ids"] for b in _ready_batches()])}
    with torch.no_grad():
        for idx, batch in enumerate((own_batch, ready_batch)):
            loss, _ = task.compute_loss(batch)
            assert metrics[f"val/loss/dataloader_idx_{idx}"] == pytest.approx(float(loss), rel=1e-5)

    _fit(tmp_path, devices=1, batch=3, accumulate=1, steps=7, resume=True)
    resumed = json.loads((tmp_path / "seen_resumed.json").read_text())["seen"]
    assert resumed == list(range(24, 36))
    from mamba_bio_audio.training.trainer import load_training_checkpoint

    assert load_training_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["Data"] == {"samples_consumed": 36}


if __name__ == "__main__":
    _fit(Path(sys.argv[1]), devices=2, batch=2, accumulate=2, steps=3, resume=False)
