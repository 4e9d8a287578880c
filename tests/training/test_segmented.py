"""Segmented training of one long sequence gives the gradients of a single pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mamba_bio_audio import MambaConfig, MambaLM
from mamba_bio_audio.training.segmented import segmented_lm_backward

from conftest import rel_err


@pytest.mark.parametrize("segment_len", [7, 16, 64])
def test_segmented_gradients_equal_one_pass(segment_len):
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=7, d_state=4)).double()
    ids = torch.randint(0, 7, (2, 50))
    logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, 7), ids[:, 1:].reshape(-1))
    loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    seg_loss = segmented_lm_backward(model, ids, segment_len)
    assert seg_loss == pytest.approx(loss.item(), rel=1e-10)
    for n, p in model.named_parameters():
        assert rel_err(p.grad, expected[n]) < 1e-9, n


def test_forward_segment_chains_to_the_full_forward():
    torch.manual_seed(1)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=7, d_state=4, d_conv=4)).double()
    ids = torch.randint(0, 7, (2, 30))
    full = model(ids)
    a, carries = model.forward_segment(ids[:, :2])  # shorter than the conv width
    b, carries = model.forward_segment(ids[:, 2:19], carries)
    c, _ = model.forward_segment(ids[:, 19:], carries)
    assert rel_err(torch.cat([a, b, c], 1), full) < 1e-12
