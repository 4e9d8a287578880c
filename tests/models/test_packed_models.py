"""Packed rows (``seq_idx``): each sequence packed into a row gets what it gets alone, for MambaLM (logits and
parameter gradients) and MambaClassifier (one row of logits per sequence, both poolings), causal and bidirectional,
S6 and S4D, with pads anywhere; on the reference backend, the Triton kernels (interpreted on CPU) and the GPU."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from mamba_bio_audio import MambaClassifier, MambaConfig, MambaLM  # noqa: E402
from mamba_bio_audio.modules.mixer import set_backend  # noqa: E402
from mamba_bio_audio.modules.packing import pool_sequences, sequence_runs  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
PAD = 4
# rows of sequence lengths (None: a run of pads); starts at 1, a one-token sequence last, a single-sequence row
ROWS = [[1, 6, 4, 1], [5, None, 4], [12]]


def config(**kw) -> MambaConfig:
    return MambaConfig(**{"d_model": 16, "n_layer": 2, "vocab_size": 12, "d_state": 4, **kw})


def packed_batch(rows, seed=0, device="cpu"):
    """(input_ids, seq_idx, attention_mask, the real sequences in order)."""
    g = torch.Generator().manual_seed(seed)
    ids, idx, mask, sequences = [], [], [], []
    for row in rows:
        r_ids, r_idx, r_mask = [], [], []
        for i, n in enumerate(row):
            real = n is not None
            n = n if real else 3
            tokens = torch.randint(5, 12, (n,), generator=g) if real else torch.full((n,), PAD)
            if real:
                sequences.append(tokens.to(device))
            r_ids.append(tokens)
            r_idx += [10 * i + 3] * n  # any ids: only changes matter
            r_mask += [real] * n
        ids.append(torch.cat(r_ids))
        idx.append(r_idx)
        mask.append(r_mask)
    assert len({t.numel() for t in ids}) == 1
    return (torch.stack(ids).to(device), torch.tensor(idx, device=device), torch.tensor(mask, device=device),
            sequences)


def no_pads(rows):
    return [[n for n in row if n is not None] + [3] * (None in row) for row in rows]


@pytest.mark.parametrize("kw", [{}, {"bidirectional": True}, {"ssm_layer": "S4D"}], ids=["causal", "bidir", "s4d"])
def test_lm_packed_equals_one_by_one(kw):
    torch.manual_seed(0)
    model = set_backend(MambaLM(config(**kw)), "reference")
    ids, seq_idx, _, sequences = packed_batch(no_pads(ROWS))
    packed = model(ids, seq_idx=seq_idx)
    alone = torch.cat([model(s[None])[0] for s in sequences])
    torch.testing.assert_close(packed.flatten(0, 1), alone, rtol=1e-5, atol=1e-5)
    # every parameter's gradient: the packed loss is the sum of the sequences' losses
    target = torch.randn(packed.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((packed * target).sum(), list(model.parameters()))
    alone_grads = torch.autograd.grad((alone * target.flatten(0, 1)).sum(), list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), grads, alone_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_lm_packed_differs_without_seq_idx():
    """The check above can fail: the same packed row without seq_idx reads across the boundaries."""
    torch.manual_seed(0)
    model = set_backend(MambaLM(config()), "reference")
    ids, seq_idx, _, _ = packed_batch(no_pads(ROWS))
    assert not torch.allclose(model(ids), model(ids, seq_idx=seq_idx), atol=1e-3)


@pytest.mark.parametrize("level", [1, 2])
def test_lm_packed_recomputed_gradients_match(level):
    """checkpoint levels 1 and 2 (level 2 runs packed rows at level 1) give the gradients of level 0."""
    torch.manual_seed(0)
    model = set_backend(MambaLM(config()), "reference").train()
    model.backbone.recompute_segment = 4
    ids, seq_idx, _, _ = packed_batch(no_pads(ROWS))

    def grads(lvl):
        model.checkpoint_level = lvl
        return torch.autograd.grad(model(ids, seq_idx=seq_idx).square().mean(), list(model.parameters()))

    for a, b in zip(grads(level), grads(0)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def classifier_packed_and_alone(pooling, backend, device="cpu", rows=ROWS, n_layer=2, **kw):
    torch.manual_seed(0)
    model = MambaClassifier(config(n_layer=n_layer, **kw), num_classes=3, pooling=pooling).to(device).eval()
    set_backend(model, backend)
    ids, seq_idx, mask, sequences = packed_batch(rows, device=device)
    with torch.no_grad():
        packed = model(ids, mask, seq_idx=seq_idx)
        alone = torch.cat([model(s[None]) for s in sequences])
    return packed.float(), alone.float()


@pytest.mark.parametrize("kw", [{}, {"bidirectional": True}], ids=["causal", "bidir"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_classifier_packed_equals_one_by_one(pooling, kw):
    packed, alone = classifier_packed_and_alone(pooling, "reference", **kw)
    assert packed.shape == (7, 3)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-6)


def test_classifier_packed_without_mask_counts_every_run():
    torch.manual_seed(0)
    model = set_backend(MambaClassifier(config(), num_classes=3, pooling="mean"), "reference").eval()
    ids, seq_idx, _, sequences = packed_batch(no_pads(ROWS))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, seq_idx=seq_idx), torch.cat([model(s[None]) for s in sequences]),
                                   rtol=1e-5, atol=1e-6)


def test_sequence_runs_split_at_id_and_pad_changes():
    seq_idx = torch.tensor([[7, 7, 7, 2, 2, 2]])
    mask = torch.tensor([[True, True, False, False, True, True]])
    assert sequence_runs(seq_idx).tolist() == [[0, 0, 0, 1, 1, 1]]
    assert sequence_runs(seq_idx, mask).tolist() == [[0, 0, 1, 2, 3, 3]]
    hidden = torch.arange(6.0).view(1, 6, 1)
    runs = sequence_runs(seq_idx, mask)
    assert pool_sequences(hidden, runs, "last", mask).flatten().tolist() == [1.0, 5.0]
    assert pool_sequences(hidden, runs, "mean", mask).flatten().tolist() == [0.5, 4.5]


@pytest.mark.skipif(not INTERPRETING, reason="CPU tensors need TRITON_INTERPRET=1")
@pytest.mark.parametrize("kw", [{}, {"bidirectional": True}], ids=["causal", "bidir"])
def test_classifier_packed_triton_interpreted(kw):
    # one block, one short row: the interpreter runs every kernel program in Python
    packed, alone = classifier_packed_and_alone("mean", "triton", rows=[[3, 1, 4]], n_layer=1, **kw)
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("kw", [{}, {"bidirectional": True}], ids=["causal", "bidir"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_classifier_packed_gpu(pooling, kw):
    packed, alone = classifier_packed_and_alone(pooling, "auto", device="cuda", **kw)
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_lm_packed_gpu():
    torch.manual_seed(0)
    model = MambaLM(config()).cuda()
    ids, seq_idx, _, sequences = packed_batch(no_pads(ROWS), device="cuda")
    with torch.no_grad():
        packed = model(ids, seq_idx=seq_idx)
        alone = torch.cat([model(s[None])[0] for s in sequences])
    torch.testing.assert_close(packed.flatten(0, 1), alone, rtol=1e-4, atol=1e-4)
