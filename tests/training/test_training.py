"""Training base: optimizer groups, schedule, warm-up folding, resumable data, and exact resume after a kill."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from mamba_bio_audio import MambaConfig, MambaLM
from mamba_bio_audio.errors import UserError
from mamba_bio_audio.training.callbacks import SeqLenWarmup, fold_to_seqlen, warmup_schedule
from mamba_bio_audio.training.data import IndexedDataModule, IndexedStream
from mamba_bio_audio.training.module import LMTask, OptimConfig
from mamba_bio_audio.training.optim import adamw, can_fuse_adamw, cosine_with_warmup, param_groups
from mamba_bio_audio.training.trainer import TrainerConfig, fit


def test_no_weight_decay_on_norms_biases_A_log_D():
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=8))
    decay, plain = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert any(n.endswith("A_log") for n in plain_names) and any(n.endswith(".D") for n in plain_names)
    assert any(n.endswith("norm.weight") for n in plain_names) and any(n.endswith("dt_proj.bias") for n in plain_names)
    assert all(n.endswith(".weight") for n in decay_names) and "backbone.embedding.weight" in decay_names
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert len(plain["params"]) + len(decay["params"]) == len(list(model.parameters()))


def test_adamw_is_fused_only_for_cuda_float_parameters_without_fp16_scaling_or_sharding():
    from types import SimpleNamespace

    def param(cuda=True, floating=True):
        return SimpleNamespace(is_cuda=cuda, is_floating_point=lambda: floating)

    assert can_fuse_adamw([param(), param()])
    assert can_fuse_adamw([{"params": [param()]}, {"params": [param()], "weight_decay": 0.0}])
    assert not can_fuse_adamw([param(), param(cuda=False)])
    assert not can_fuse_adamw([param(floating=False)])
    assert not can_fuse_adamw([])
    assert not can_fuse_adamw([param()], fp16_scaled=True) and not can_fuse_adamw([param()], sharded=True)
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=8))  # CPU parameters: the default AdamW
    opt = adamw(param_groups(model, 0.1), lr=1e-3)
    assert not opt.defaults["fused"] and len(opt.param_groups) == 2


@pytest.mark.gpu
def test_recipes_adamw_on_cuda_is_fused_and_steps_like_the_foreach_one():
    torch.manual_seed(0)
    models = [MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=8)).cuda() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    task = LMTask(models[0], OptimConfig(lr=1e-2, max_steps=10))
    fused = task.configure_optimizers()["optimizer"]
    assert fused.defaults["fused"]
    plain = torch.optim.AdamW(param_groups(models[1], 0.1), lr=1e-2, betas=(0.9, 0.95), foreach=True)
    ids = torch.randint(0, 8, (2, 33), device="cuda")
    for model, opt in zip(models, (fused, plain)):
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1).float(),
                                                     ids[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_cosine_schedule_shape():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    lrs = []
    for _ in range(120):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55, abs=0.01) and lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:110], lrs[10:111]))


def test_fold_to_seqlen_keeps_tokens_and_repeats_labels():
    batch = {"input_ids": torch.arange(16).reshape(2, 8), "label": torch.tensor([3, 5])}
    folded = fold_to_seqlen(batch, 2)
    assert folded["input_ids"].shape == (8, 2) and torch.equal(folded["input_ids"].reshape(-1), torch.arange(16))
    assert folded["label"].tolist() == [3, 3, 3, 3, 5, 5, 5, 5]
    assert fold_to_seqlen(batch, 8) is batch
    with pytest.raises(ValueError):
        fold_to_seqlen(batch, 3)
    assert warmup_schedule(64, 512, 10) == [(0, 64), (10, 128), (20, 256), (30, 512)]
    cb = SeqLenWarmup(64, 512, 10)
    assert [cb.seqlen_at(s) for s in (0, 9, 10, 25, 30, 1000)] == [64, 64, 128, 256, 512, 512]


def test_indexed_stream_order_is_independent_of_workers():
    def sample(i):
        return {"i": torch.tensor(i)}

    def first_batches(workers, start=0, rank=0, world=1):
        loader = DataLoader(IndexedStream(sample, 3, start, rank, world), batch_size=3, num_workers=workers)
        it = iter(loader)
        return [next(it)["i"].tolist() for _ in range(4)]

    assert first_batches(0) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert first_batches(2) == first_batches(0)
    assert first_batches(0, start=2) == [[6, 7, 8], [9, 10, 11], [12, 13, 14], [15, 16, 17]]
    assert first_batches(0, rank=1, world=2)[:2] == [[3, 4, 5], [9, 10, 11]]


class _Kill(Exception):
    pass


def _run(out, max_steps, kill_at=None, resume=False):
    import lightning.pytorch as pl

    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=6, d_state=4))
    gen = torch.Generator()

    def sample(i):
        gen.manual_seed(1000 + i)
        return {"input_ids": torch.randint(0, 6, (17,), generator=gen)}

    callbacks = []
    if kill_at is not None:
        class Killer(pl.Callback):
            def on_train_batch_start(self, trainer, *args):
                if trainer.global_step == kill_at:
                    raise _Kill()

        callbacks.append(Killer())
    task = LMTask(model, OptimConfig(lr=1e-2, max_steps=12, warmup=3))
    cfg = TrainerConfig(max_steps=max_steps, device="cpu", checkpoint_every=4, progress=False, log_every=1,
                        callbacks=callbacks, deterministic=True)
    fit(task, IndexedDataModule(sample, 4), out, cfg, resume=resume)
    return model


def test_resume_after_kill_gives_the_same_weights(tmp_path):
    straight = _run(tmp_path / "a", 12)
    with pytest.raises(_Kill):
        _run(tmp_path / "b", 12, kill_at=6)  # dies after the checkpoint at step 4
    resumed = _run(tmp_path / "b", 12, resume=True)
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    with pytest.raises(UserError, match="no checkpoint"):
        _run(tmp_path / "c", 2, resume=True)


def test_one_named_gpu_with_several_devices_is_one_line():
    """`--device cuda:1 --devices 2` would train on one GPU silently (Lightning's launcher) or fail after the run
    folder is written (torchrun): refused when the config is made."""
    from mamba_bio_audio.training.trainer import TrainerConfig

    with pytest.raises(UserError, match="--device cuda:1 names one GPU"):
        TrainerConfig(device="cuda:1", devices=2)
