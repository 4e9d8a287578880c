"""``cu_seqlens`` (n + 1,) cumulative lengths, the varlen form of ``seq_idx`` for sequences packed into one row:
converted in one place (``ops.resolve_seq_idx``), it gives exactly what the equivalent ``seq_idx`` gives in the
scan, the conv, MambaLM, MambaClassifier and SashimiLM; malformed cu_seqlens and both forms at once are refused."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from mamba_bio_audio import MambaClassifier, MambaConfig, MambaLM, ops  # noqa: E402
from mamba_bio_audio.models.sashimi import SashimiLM, preset  # noqa: E402
from mamba_bio_audio.modules.mixer import set_backend  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
LENGTHS = [1, 6, 4, 1, 5]  # a one-token sequence first and fourth
CU = torch.tensor([0, 1, 7, 11, 12, 17])
SEQLEN = 17


def seq_idx_of(lengths) -> torch.Tensor:
    return torch.tensor([[k for k, n in enumerate(lengths) for _ in range(n)]], dtype=torch.int32)


# ---- the conversion ---------------------------------------------------------------------------------------------
def test_cu_seqlens_numbers_each_sequence():
    assert torch.equal(ops.resolve_seq_idx(None, CU, 1, SEQLEN), seq_idx_of(LENGTHS))
    one = ops.resolve_seq_idx(None, torch.tensor([0, 5], dtype=torch.int32), 1, 5)
    assert one.dtype == torch.int32 and one.tolist() == [[0] * 5]
    # zero-length sequences (repeated values, also first and last) hold no position
    empty = ops.resolve_seq_idx(None, torch.tensor([0, 0, 2, 2, 5, 5]), 1, 5)
    assert empty.tolist() == [[1, 1, 3, 3, 3]]
    seq_idx = torch.zeros(2, 3, dtype=torch.int64)
    assert ops.resolve_seq_idx(seq_idx, None, 2, 3) is seq_idx
    assert ops.resolve_seq_idx(None, None, 2, 3) is None


@pytest.mark.parametrize("cu, batch, match", [
    (torch.tensor([1, 5, 17]), 1, "start at 0 and end at seqlen 17"),
    (torch.tensor([0, 5, 16]), 1, "start at 0 and end at seqlen 17"),
    (torch.tensor([0, 9, 5, 17]), 1, "non-decreasing"),
    (torch.tensor([0, 17]), 2, "batch must be 1, got 2"),
    (torch.tensor([0]), 1, "1-D integer tensor"),
    (torch.tensor([[0, 17]]), 1, "1-D integer tensor"),
    (torch.tensor([0.0, 17.0]), 1, "1-D integer tensor"),
    ([0, 17], 1, "1-D integer tensor"),
])
def test_malformed_cu_seqlens_refused(cu, batch, match):
    with pytest.raises(ValueError, match=match):
        ops.resolve_seq_idx(None, cu, batch, SEQLEN)


def test_empty_sequence_refused_where_asked_and_both_forms_refused():
    with pytest.raises(ValueError, match="zero-length sequence"):
        ops.resolve_seq_idx(None, torch.tensor([0, 5, 5, 17]), 1, SEQLEN, allow_empty=False)
    with pytest.raises(ValueError, match="not both"):
        ops.resolve_seq_idx(seq_idx_of(LENGTHS), CU, 1, SEQLEN)


# ---- the ops ----------------------------------------------------------------------------------------------------
def scan_leaves(seed=0, dim=3, d_state=4):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()

    return {"u": r(1, dim, SEQLEN), "delta": r(1, dim, SEQLEN, scale=0.5), "A": (-torch.rand(
        dim, d_state, generator=g, dtype=torch.float64) - 0.5).requires_grad_(), "B": r(1, d_state, SEQLEN),
        "C": r(1, d_state, SEQLEN), "D": r(dim), "z": r(1, dim, SEQLEN), "delta_bias": r(dim, scale=0.3),
        "initial_state": r(1, dim, d_state)}


def scan_with(backend, **packing):
    leaves = scan_leaves()
    out, last = ops.selective_scan_fn(**leaves, delta_softplus=True, return_last_state=True, backend=backend,
                                      **packing)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    grads = torch.autograd.grad((out * weights).sum() + last.sum(), list(leaves.values()))
    return [out, last, *grads]


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.skipif(
    not INTERPRETING, reason="CPU Triton needs TRITON_INTERPRET=1"))])
def test_scan_cu_seqlens_equals_seq_idx(backend):
    if backend == "triton":
        pytest.importorskip("triton")
    by_cu = scan_with(backend, cu_seqlens=CU)
    by_idx = scan_with(backend, seq_idx=seq_idx_of(LENGTHS))
    for a, b in zip(by_cu, by_idx):
        assert torch.equal(a, b)
    # and it packs: without the numbering the same row reads across the boundaries
    assert not torch.allclose(scan_with(backend)[0], by_idx[0])
    # a zero-length sequence changes nothing
    for a, b in zip(scan_with(backend, cu_seqlens=torch.tensor([0, 1, 7, 7, 11, 12, 17, 17])), by_idx):
        assert torch.equal(a, b)


def test_conv_cu_seqlens_equals_seq_idx():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, SEQLEN, generator=g, dtype=torch.float64)
    weight, bias = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, generator=g,
                                                                                     dtype=torch.float64)
    init = torch.randn(1, 3, 3, generator=g, dtype=torch.float64)
    kw = {"activation": "silu", "initial_state": init, "return_final_state": True, "backend": "reference"}
    by_cu = ops.causal_conv1d_fn(x, weight, bias, cu_seqlens=CU, **kw)
    by_idx = ops.causal_conv1d_fn(x, weight, bias, seq_idx=seq_idx_of(LENGTHS), **kw)
    assert torch.equal(by_cu[0], by_idx[0]) and torch.equal(by_cu[1], by_idx[1])
    assert not torch.allclose(ops.causal_conv1d_fn(x, weight, bias, **kw)[0], by_idx[0])


def test_ops_refuse_both_forms_and_a_batch():
    leaves = {k: v.detach() for k, v in scan_leaves().items()}
    with pytest.raises(ValueError, match="not both"):
        ops.selective_scan_fn(**leaves, backend="reference", seq_idx=seq_idx_of(LENGTHS), cu_seqlens=CU)
    x = torch.randn(2, 3, SEQLEN, dtype=torch.float64)
    with pytest.raises(ValueError, match="batch must be 1"):
        ops.causal_conv1d_fn(x, torch.randn(3, 4, dtype=torch.float64), backend="reference", cu_seqlens=CU)
    with pytest.raises(ValueError, match="not both"):
        ops.causal_conv1d_fn(x[:1], torch.randn(3, 4, dtype=torch.float64), backend="reference",
                             seq_idx=seq_idx_of(LENGTHS), cu_seqlens=CU)


# ---- the models -------------------------------------------------------------------------------------------------
def mamba_config(**kw) -> MambaConfig:
    return MambaConfig(**{"d_model": 16, "n_layer": 2, "vocab_size": 12, "d_state": 4, **kw})


def ids_of(seqlen=SEQLEN, vocab=12, seed=0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw", [{}, {"bidirectional": True}], ids=["causal", "bidir"])
def test_lm_cu_seqlens_equals_seq_idx(kw):
    torch.manual_seed(0)
    model = set_backend(MambaLM(mamba_config(**kw)).double(), "reference")
    ids = ids_of()
    by_cu = model(ids, cu_seqlens=CU)
    by_idx = model(ids, seq_idx=seq_idx_of(LENGTHS))
    assert torch.equal(by_cu, by_idx)
    assert not torch.allclose(model(ids), by_idx)
    assert torch.equal(model(ids, cu_seqlens=torch.tensor([0, 0, 1, 7, 11, 11, 12, 17])), by_idx)
    with pytest.raises(ValueError, match="not both"):
        model(ids, seq_idx=seq_idx_of(LENGTHS), cu_seqlens=CU)
    with pytest.raises(ValueError, match="batch must be 1"):
        model(ids.expand(2, -1), cu_seqlens=CU)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_classifier_cu_seqlens_pools_per_sequence(pooling):
    torch.manual_seed(0)
    model = set_backend(MambaClassifier(mamba_config(), num_classes=3, pooling=pooling).double(), "reference")
    ids = ids_of()
    by_cu = model(ids, cu_seqlens=CU)
    assert by_cu.shape == (len(LENGTHS), 3)
    assert torch.equal(by_cu, model(ids, seq_idx=seq_idx_of(LENGTHS)))
    alone = torch.cat([model(ids[:, a:b]) for a, b in zip(CU[:-1].tolist(), CU[1:].tolist())])
    torch.testing.assert_close(by_cu, alone, rtol=1e-5, atol=1e-6)  # pooled in float32
    with pytest.raises(ValueError, match="zero-length sequence"):  # no token to pool: no row of logits
        model(ids, cu_seqlens=torch.tensor([0, 1, 1, 17]))
    with pytest.raises(ValueError, match="not both"):
        model(ids, seq_idx=seq_idx_of(LENGTHS), cu_seqlens=CU)


def test_sashimi_cu_seqlens_equals_seq_idx():
    torch.manual_seed(0)
    lm = set_backend(SashimiLM(preset("tiny", pools=(2, 2), vocab_size=32)).double(), "reference")
    lengths = [8, 4, 5]  # stride 4: clips start at 0, 8, 12
    ids = ids_of(17, vocab=32)
    cu = torch.tensor([0, 8, 12, 17])
    by_cu = lm(ids, cu_seqlens=cu)
    assert torch.equal(by_cu, lm(ids, seq_idx=seq_idx_of(lengths)))
    assert not torch.allclose(lm(ids), by_cu)
    with pytest.raises(ValueError, match="multiples of the stride 4"):
        lm(ids, cu_seqlens=torch.tensor([0, 6, 17]))
    with pytest.raises(ValueError, match="not both"):
        lm(ids, seq_idx=seq_idx_of(lengths), cu_seqlens=cu)
