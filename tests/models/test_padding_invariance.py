"""A padded row gets the logits it gets alone: MambaClassifier with an attention_mask, both poolings, causal and
bidirectional mixers, on the reference backend, the Triton kernels (interpreted on CPU) and the GPU."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from mamba_bio_audio import MambaClassifier, MambaConfig  # noqa: E402
from mamba_bio_audio.errors import UserError  # noqa: E402
from mamba_bio_audio.modules.mixer import flip_within, set_backend  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
LENGTHS = (13, 5, 9, 1)
PAD = 4


def padded_and_alone(pooling: str, bidirectional: bool, backend: str, device: str = "cpu",
                     lengths: tuple[int, ...] = LENGTHS, n_layer: int = 2):
    """(logits of the padded batch (rows, classes), logits of each row run alone (rows, classes))."""
    torch.manual_seed(0)
    config = MambaConfig(d_model=16, n_layer=n_layer, vocab_size=12, d_state=4, bidirectional=bidirectional)
    model = MambaClassifier(config, num_classes=3, pooling=pooling).to(device=device).eval()
    set_backend(model, backend)
    rows = [torch.randint(7, 12, (n,), device=device) for n in lengths]
    ids = torch.full((len(rows), max(lengths)), PAD, device=device)
    mask = torch.zeros(ids.shape, dtype=torch.bool, device=device)
    for b, row in enumerate(rows):
        ids[b, : row.numel()] = row
        mask[b, : row.numel()] = True
    with torch.no_grad():
        batched = model(ids, mask)
        alone = torch.cat([model(row[None]) for row in rows])
    return batched.float(), alone.float()


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_padding_invariance_reference(pooling, bidirectional):
    batched, alone = padded_and_alone(pooling, bidirectional, "reference")
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not INTERPRETING, reason="CPU tensors need TRITON_INTERPRET=1")
@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_padding_invariance_triton_interpreted(pooling, bidirectional):
    # one block and two rows: the interpreter runs every kernel program in Python, seconds per launch
    batched, alone = padded_and_alone(pooling, bidirectional, "triton", lengths=(6, 2), n_layer=1)
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_padding_invariance_gpu(pooling, bidirectional):
    batched, alone = padded_and_alone(pooling, bidirectional, "auto", device="cuda")
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)


def test_the_reverse_direction_would_see_the_pads_without_lengths():
    # The check above can fail: reversing whole padded rows (the mixer without lengths) changes the logits.
    torch.manual_seed(0)
    model = MambaClassifier(MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4, bidirectional=True),
                            num_classes=3, pooling="mean").eval()
    row = torch.randint(7, 12, (1, 6))
    ids = torch.cat([row, torch.full((1, 4), PAD)], dim=1)
    mask = torch.arange(10) < 6
    with torch.no_grad():
        alone = model(row)
        unaware = model.head(model.pool(model.backbone(ids), mask[None]))
        aware = model(ids, mask[None])
    assert not torch.allclose(unaware, alone, atol=1e-4)
    torch.testing.assert_close(aware, alone, rtol=1e-5, atol=1e-6)


def test_flip_within_reverses_each_row_to_its_length_and_is_its_own_inverse():
    x = torch.arange(12.0).view(2, 6, 1)
    lengths = torch.tensor([4, 6])
    flipped = flip_within(x, lengths)
    assert flipped[0, :, 0].tolist() == [3, 2, 1, 0, 4, 5]
    assert flipped[1, :, 0].tolist() == [11, 10, 9, 8, 7, 6]
    torch.testing.assert_close(flip_within(flipped, lengths), x)


def test_left_padding_is_refused():
    model = MambaClassifier(MambaConfig(d_model=8, n_layer=1, vocab_size=12, d_state=4), num_classes=2)
    mask = torch.tensor([[False, True, True]])
    with pytest.raises(UserError, match="right padding"):
        model(torch.full((1, 3), 7), mask)
