"""Masked-LM pretraining (Caduceus / BERT masking): the 15% / 80-10-10 statistics, the loss only at the chosen
positions, seeded masks, and the refusal of a causal model."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mamba_bio_audio.data_prep.dna.tokenizer import A_ID, MASK_ID, T_ID
from mamba_bio_audio.errors import UserError
from mamba_bio_audio.training.mlm import IGNORE, MLMTask, mask_generator, mask_tokens, masked_lm_loss
from mamba_bio_audio.training.module import OptimConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _bases(shape, seed=0) -> torch.Tensor:
    return torch.randint(A_ID, T_ID + 1, shape, generator=torch.Generator().manual_seed(seed))


def test_masking_statistics_are_caduceus_15_percent_and_80_10_10():
    ids = _bases((64, 1024))  # 65,536 positions: the standard error of the 15% is 0.0014
    inputs, targets = mask_tokens(ids, mask_generator(ids.device, 1))
    chosen = targets != IGNORE
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    assert torch.equal(targets[chosen], ids[chosen])  # the targets are the original bases
    assert torch.equal(inputs[~chosen], ids[~chosen])  # the rest is untouched
    n = chosen.sum().item()
    masked = (inputs == MASK_ID) & chosen
    assert not ((inputs == MASK_ID) & ~chosen).any()
    assert abs(masked.sum().item() / n - 0.8) < 0.02
    # the other 20%: half a random base (which may equal the original: 1 in 4), half unchanged
    kept_base = chosen & (inputs != MASK_ID)
    changed = (kept_base & (inputs != ids)).sum().item() / n
    unchanged = (kept_base & (inputs == ids)).sum().item() / n
    assert abs(changed - 0.1 * 3 / 4) < 0.01 and abs(unchanged - (0.1 + 0.1 / 4)) < 0.01
    replacements = inputs[kept_base & (inputs != ids)]
    assert replacements.min() >= A_ID and replacements.max() <= T_ID  # a random base, never a special token
    counts = torch.bincount(replacements - A_ID, minlength=4).float()
    assert (counts / counts.sum() - 0.25).abs().max() < 0.04  # uniform over A C G T


def test_masks_are_a_function_of_the_seed():
    ids = _bases((4, 256))
    a = mask_tokens(ids, mask_generator(ids.device, 7))
    b = mask_tokens(ids, mask_generator(ids.device, 7))
    c = mask_tokens(ids, mask_generator(ids.device, 8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


class FixedLogits(nn.Module):
    """Logits (batch, seqlen, 16) that ignore the input, so their gradient shows which positions the loss reads."""

    def __init__(self, batch, seqlen):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(batch, seqlen, 16))
        self.seen = None

    def forward(self, ids):
        self.seen = ids
        return self.logits


def test_the_loss_reads_only_the_chosen_positions():
    ids = _bases((3, 200), seed=2)
    model = FixedLogits(3, 200)
    total, count = masked_lm_loss(model, ids, mask_generator(ids.device, 5))
    inputs, targets = mask_tokens(ids, mask_generator(ids.device, 5))
    assert torch.equal(model.seen, inputs)  # the model read the masked inputs, not the originals
    chosen = targets != IGNORE
    assert count.item() == chosen.sum().item() > 0
    total.backward()
    touched = model.logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched, chosen)
    expected = torch.nn.functional.cross_entropy(model.logits[chosen], ids[chosen], reduction="sum")
    torch.testing.assert_close(total, expected)


def test_mlm_task_refuses_a_causal_model_and_takes_a_bidirectional_one():
    from mamba_bio_audio import MambaConfig, MambaLM
    from mamba_bio_audio.models.caduceus import CaduceusLM, dna_caduceus_config

    causal = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=12, d_state=4))
    with pytest.raises(UserError, match="bidirectional model"):
        MLMTask(causal, OptimConfig())
    MLMTask(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=12, d_state=4, bidirectional=True)), OptimConfig())
    torch.manual_seed(0)
    task = MLMTask(CaduceusLM(dna_caduceus_config(16, 1)), OptimConfig())
    loss, metrics = task.compute_loss({"input_ids": _bases((2, 64))})
    assert torch.isfinite(loss) and loss.item() > 0 and "bits_per_token" in metrics
    loss.backward()
    assert task.model.backbone.layers[0].mixer.submodule.mamba_fwd.in_proj.weight.grad is not None
