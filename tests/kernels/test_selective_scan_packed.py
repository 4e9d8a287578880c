"""Packed sequences (``seq_idx``) in the selective scan: several sequences packed into one row give exactly what
each gives alone, forward (out, last_state) and every gradient, for the fp64 oracle, the chunked torch reference
and the Triton kernels (CPU under TRITON_INTERPRET=1 at tiny sizes; ``-m gpu`` on CUDA with TRITON_INTERPRET=0).

The one-by-one result is the fp64 oracle run on each sequence's slice of the same leaves, the row's first
sequence from initial_state and the others from zero; its outputs are put back in the packed layout, so one loss
gives gradients comparable leaf by leaf.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402

from mamba_bio_audio import ops  # noqa: E402
from mamba_bio_audio.kernels.selective_scan.function import selective_scan_triton  # noqa: E402
from mamba_bio_audio.kernels.selective_scan.naive import selective_scan_naive  # noqa: E402
from mamba_bio_audio.kernels.selective_scan.reference import selective_scan_chunked  # noqa: E402

from helpers import poison_empty  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
cpu_only = pytest.mark.skipif(not INTERPRETING, reason="CPU cases need TRITON_INTERPRET=1")
gpu_only = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING,
                                                reason="needs CUDA and TRITON_INTERPRET=0")]
NAMES = ["out", "last_state", "u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Kernel outputs start as NaN, so an element a kernel forgets to write fails the comparison."""
    poison_empty(monkeypatch)


def seq_idx_of(lengths, first_id=0, device="cpu"):
    """(batch, seqlen) int32 from each row's sequence lengths (rows sum to the same seqlen); ids first_id + i."""
    rows = [[first_id + i for i, n in enumerate(row) for _ in range(n)] for row in lengths]
    assert len({len(r) for r in rows}) == 1, "rows must have one length"
    return torch.tensor(rows, dtype=torch.int32, device=device)


def make_leaves(batch, dim, seqlen, d_state, *, bc="varying", groups=1, z=True, D=True, bias=True, h0=True, seed=0,
                device="cpu"):
    """float64 leaves in the oracle's argument order: u, delta, A, B, C, D, z, delta_bias, initial_state."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device)

    def bc_tensor():
        return {"fixed": lambda: randn(dim, d_state), "varying": lambda: randn(batch, d_state, seqlen),
                "grouped": lambda: randn(batch, groups, d_state, seqlen)}[bc]()

    A = -(torch.rand(dim, d_state, generator=g, dtype=torch.float64) * 2 + 0.1).to(device)
    return [randn(batch, dim, seqlen), randn(batch, dim, seqlen, scale=0.5), A, bc_tensor(), bc_tensor(),
            randn(dim) if D else None, randn(batch, dim, seqlen) if z else None,
            randn(dim, scale=0.5) if bias else None, randn(batch, dim, d_state) if h0 else None]


def one_by_one(xs, lengths, softplus):
    """The fp64 oracle on each sequence alone, put back in the packed layout: (out, last_state)."""
    u, delta, A, B, C, D, z, bias, h0 = xs
    rows, lasts = [], []
    for r, row in enumerate(lengths):
        outs, start = [], 0
        for i, n in enumerate(row):
            t = slice(start, start + n)
            pu, pdelta, pB, pC, pz = (x if x is None or x.dim() == 2 else x[r:r + 1, ..., t] for x in (u, delta, B, C, z))
            out, last = selective_scan_naive(
                pu, pdelta, A, pB, pC, D, pz, bias, softplus, True,
                h0[r:r + 1] if h0 is not None and i == 0 else None)
            outs.append(out)
            start += n
        rows.append(torch.cat(outs, dim=2))
        lasts.append(last)
    return torch.cat(rows), torch.cat(lasts)


def results(fn, leaves, dtype, softplus, seed):
    """out, last_state and the gradient of every leaf for loss = <out, g_out> + <last_state, g_last>; fn(xs)
    gives (out, last_state) from the leaves cast to dtype."""
    xs = [x.detach().to(dtype).requires_grad_(True) if x is not None else None for x in leaves]
    out, last = fn(xs)
    g = torch.Generator().manual_seed(seed + 1)
    loss = (out * torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)).sum()
    loss = loss + (last * torch.randn(last.shape, generator=g, dtype=torch.float64).to(last)).sum()
    present = [x for x in xs if x is not None]
    grads = iter(torch.autograd.grad(loss, present))
    return [out, last] + [next(grads) if x is not None else None for x in xs]


def assert_packed_matches(scan, leaves, lengths, *, dtype=torch.float32, softplus=True, seed=0, tol=1e-5,
                          first_id=0, **kw):
    """scan(*args, seq_idx=...) on the packed rows == the fp64 oracle one sequence at a time, in out, last_state
    and every gradient (relative error <= tol)."""
    device = leaves[0].device
    seq_idx = seq_idx_of(lengths, first_id, device)
    rounded = [x.to(dtype).double() if x is not None else None for x in leaves]  # what the kernel sees
    ref = results(lambda xs: one_by_one(xs, lengths, softplus), rounded, torch.float64, softplus, seed)
    got = results(lambda xs: scan(*xs[:8], delta_softplus=softplus, return_last_state=True, initial_state=xs[8],
                                  seq_idx=seq_idx, **kw), leaves, dtype, softplus, seed)
    for name, a, r in zip(NAMES, got, ref):
        if r is None:
            assert a is None, f"{name}: unexpected gradient"
            continue
        assert a is not None and a.shape == r.shape, f"{name}: shape"
        assert torch.isfinite(a).all(), f"{name}: non-finite values"
        err = ((a.double() - r).norm() / r.norm().clamp_min(1e-30)).item()
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


# Rows of sequence lengths. Chunk edges of the Triton cases below are at multiples of 4: starts fall on them
# (t = 4, 8, 16), just after them, at t = 1 (a first sequence of length 1) and at the last step (a last
# sequence of length 1); one row is a single sequence.
CASES = {
    "edges": dict(lengths=[[4, 1, 8], [5, 7, 1]]),
    # segment edges at t = 8, 16: starts on them, and inside segments whose edge is not a start (t = 11, row 1)
    "segments": dict(lengths=[[8, 3, 5, 7], [1, 10, 12]], kw=dict(n_segments=3)),
    "grouped-save2": dict(lengths=[[6, 9, 2], [2, 15]], bc="grouped", groups=2, kw=dict(save_every=2)),
    "save3-parallel": dict(lengths=[[6, 9, 2], [2, 15]], kw=dict(save_every=3, parallel_recompute=True)),
    "fixed-plain": dict(lengths=[[1, 1, 1, 3], [6]], bc="fixed", z=False, D=False, bias=False, softplus=False),
    # seqlen 16, dim 4: every tile inside the shapes (the kernels' EVEN, no masks); starts on and off chunk edges
    "even": dict(lengths=[[4, 1, 11], [5, 10, 1]], kw=dict(n_segments=2)),
}


def case_args(name):
    case = dict(CASES[name])
    lengths, kw, softplus = case.pop("lengths"), case.pop("kw", {}), case.pop("softplus", True)
    seqlen = sum(lengths[0])
    return lengths, kw, softplus, dict(batch=len(lengths), dim=4, seqlen=seqlen, d_state=4, **case)


@pytest.mark.parametrize("name", list(CASES))
def test_oracle_packed_equals_one_by_one(name):
    lengths, _, softplus, shape = case_args(name)
    leaves = make_leaves(**shape, seed=1)
    assert_packed_matches(selective_scan_naive, leaves, lengths, dtype=torch.float64, softplus=softplus, seed=1,
                          tol=1e-12, first_id=3)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("chunk_size", [4, 5])
def test_reference_packed_equals_one_by_one(name, chunk_size):
    lengths, _, softplus, shape = case_args(name)
    leaves = make_leaves(**shape, seed=2)
    assert_packed_matches(selective_scan_chunked, leaves, lengths, dtype=torch.float64, softplus=softplus, seed=2,
                          tol=1e-12, chunk_size=chunk_size)


@cpu_only
@pytest.mark.parametrize("name", list(CASES))
def test_triton_packed_equals_one_by_one(name):
    lengths, kw, softplus, shape = case_args(name)
    leaves = make_leaves(**shape, seed=3)
    assert_packed_matches(selective_scan_triton, leaves, lengths, softplus=softplus, seed=3,
                          **{"chunk_size": 4, "block_d": 4, **kw})


@cpu_only
@pytest.mark.parametrize("name", ["edges", "segments", "grouped-save2"])
def test_triton_packed_softplus_in_kernel(name):
    """softplus in the scan kernels: no dt buffer to carry the starts in its sign bits, so they come from the
    reset row, as with delta_softplus off."""
    lengths, kw, softplus, shape = case_args(name)
    leaves = make_leaves(**shape, seed=4)
    assert_packed_matches(selective_scan_triton, leaves, lengths, softplus=softplus, seed=4,
                          **{"chunk_size": 4, "block_d": 4, "softplus_in_kernel": True, **kw})


def test_ids_only_matter_where_they_change():
    """Any integer ids: a reset where the value changes, none elsewhere (ids need not increase)."""
    leaves = make_leaves(1, 3, 7, 2, seed=4)
    args = [x.float() for x in leaves]
    a = selective_scan_chunked(*args[:8], True, True, args[8], seq_idx=torch.tensor([[5, 5, 2, 2, 2, 9, 9]]))
    b = selective_scan_chunked(*args[:8], True, True, args[8], seq_idx=torch.tensor([[0, 0, 1, 1, 1, 2, 2]]))
    c = selective_scan_chunked(*args[:8], True, True, args[8], seq_idx=torch.full((1, 7), 4))
    d = selective_scan_chunked(*args[:8], True, True, args[8])
    for x, y in zip(a + c, b + d):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@cpu_only
def test_triton_one_sequence_per_row_is_unchanged():
    """A constant seq_idx (one sequence per row) gives what no seq_idx gives."""
    leaves = [x.float() for x in make_leaves(2, 4, 9, 4, seed=5)]
    kw = dict(delta_softplus=True, return_last_state=True, initial_state=leaves[8], chunk_size=4, block_d=4)
    with_idx = selective_scan_triton(*leaves[:8], seq_idx=torch.full((2, 9), 7), **kw)
    without = selective_scan_triton(*leaves[:8], **kw)
    for x, y in zip(with_idx, without):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("seq_idx,message", [(torch.zeros(2, 5), "integer"), (torch.zeros(2, 4, dtype=torch.int32),
                                                                                    "shape")])
def test_bad_seq_idx_is_refused(seq_idx, message):
    leaves = [x.float() for x in make_leaves(2, 3, 5, 2, seed=6)]
    with pytest.raises(ValueError, match=message):
        ops.selective_scan_fn(*leaves[:8], True, backend="reference", seq_idx=seq_idx)


def test_ops_reference_backend_takes_seq_idx():
    lengths = [[2, 3], [5]]
    leaves = make_leaves(2, 3, 5, 2, seed=7)
    assert_packed_matches(lambda *a, **k: ops.selective_scan_fn(*a, backend="reference", **k), leaves, lengths,
                          dtype=torch.float64, seed=7, tol=1e-12)


def test_cuda_backend_refuses_seq_idx(monkeypatch):
    """mamba_ssm's scan has no seq_idx: a clear error, not a silently unpacked result."""
    monkeypatch.setattr(ops, "_load", lambda module, name: (lambda *a, **k: None))
    leaves = [x.float() if x is not None else None for x in make_leaves(1, 3, 5, 2, h0=False, seed=8)]
    with pytest.raises(ValueError, match="seq_idx"):
        ops.selective_scan_fn(*leaves[:8], True, backend="cuda", seq_idx=torch.zeros(1, 5, dtype=torch.int32))


def random_lengths(batch, seqlen, seed, max_len):
    """Each row: lengths 1..max_len summing to seqlen."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        row, left = [], seqlen
        while left:
            n = min(left, int(torch.randint(1, max_len + 1, (1,), generator=g)))
            row.append(n)
            left -= n
        rows.append(row)
    return rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", [dict(), dict(bc="grouped", groups=4), dict(bc="fixed", kw=dict(n_segments=4)),
                                  dict(kw=dict(save_every=2, n_segments=3))],
                         ids=["varying", "grouped", "fixed-segments", "save2-segments"])
@pytest.mark.parametrize("in_kernel", [False, True], ids=["softplus-pass", "softplus-in-kernel"])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=gpu_only)])
def test_gpu_triton_packed_matches_reference(device, dtype, case, in_kernel):
    """Triton on CUDA with seq_idx vs the fp64 chunked reference with the same seq_idx (the reference is checked
    against the one-by-one oracle above), at a realistic size: lengths 1..700 packed into rows of 2048."""
    case = dict(case)
    kw = case.pop("kw", {})
    leaves = make_leaves(2, 96, 2048, 16, device=device, seed=11, **case)
    seq_idx = seq_idx_of(random_lengths(2, 2048, 11, 700), device=device)
    ref = results(lambda xs: selective_scan_chunked(*xs[:8], True, True, xs[8], seq_idx=seq_idx),
                  [x.to(dtype).double() if x is not None else None for x in leaves], torch.float64, True, 11)
    got = results(lambda xs: selective_scan_triton(*xs[:8], True, True, xs[8], seq_idx, softplus_in_kernel=in_kernel,
                                                   **kw), leaves, dtype, True, 11)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for name, a, r in zip(NAMES, got, ref):
        err = ((a.double() - r).norm() / r.norm().clamp_min(1e-30)).item()
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


@cpu_only
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int16, torch.uint8])
def test_reset_exponents_mark_each_start_once(dtype):
    """The one-launch reset kernel: -inf exactly where the id changes (t >= 1), 0 elsewhere, for any integer dtype
    and a strided seq_idx, over several time blocks (odd length past RESET_BLOCK_T)."""
    from mamba_bio_audio.kernels.selective_scan.function import RESET_BLOCK_T, reset_exponents

    torch.manual_seed(0)
    seqlen = RESET_BLOCK_T + 37
    wide = torch.randint(0, 3, (3, 2 * seqlen)).cumsum(1).to(dtype)  # runs of equal ids, uint8 wraps: still runs
    seq_idx = wide[:, ::2]  # strided: stride_t = 2
    reset = reset_exponents(seq_idx, torch.device("cpu"))
    expected = torch.zeros(seq_idx.shape)
    expected[:, 1:][seq_idx[:, 1:] != seq_idx[:, :-1]] = float("-inf")
    assert reset.dtype == torch.float32 and reset.is_contiguous()
    assert torch.equal(reset, expected) and bool(torch.isinf(reset).any())


@pytest.mark.parametrize("kw", [dict(), dict(n_segments=2), dict(save_every=2)], ids=["plain", "segments", "save2"])
@pytest.mark.parametrize("device", [pytest.param("cpu", marks=cpu_only), pytest.param("cuda", marks=gpu_only)])
def test_triton_start_where_softplus_underflows(device, kw):
    """With softplus the kernels read each start as dt's sign bit: a start where softplus(delta + bias) underflows
    to 0 in fp32 (marked -0.0, which `dt < 0` would miss) still resets. Chunk 4, seqlen 15: starts at the last
    step of a chunk (t = 3, 7), at a chunk edge (t = 8, also a segment edge with n_segments=2) and at the last
    step of the partly masked tail chunk (t = 14); dim 5 with block_d 4 leaves masked channel lanes. On CUDA
    the start's decay addend comes from PTX prmt, under the interpreter from a compare and select."""
    lengths = [[3, 4, 1, 6, 1], [5, 4, 4, 2]]
    leaves = make_leaves(2, 5, 15, 4, seed=12, device=device)
    seq_idx = seq_idx_of(lengths, device=device)
    delta, bias = leaves[1], leaves[7]
    for b, t in (seq_idx[:, 1:] != seq_idx[:, :-1]).nonzero().tolist():
        delta[b, :, t + 1] = -200.0 - bias  # fp32 softplus(-200) = 0 (fp64: 1e-87)
    assert_packed_matches(selective_scan_triton, leaves, lengths, seed=12, chunk_size=4, block_d=4, **kw)


@cpu_only
def test_softplus_pass_marks_starts_in_sign():
    """dt_input with reset: the same magnitudes as without, the sign bit set exactly at each start (also on a dt
    that underflows to 0), over channel blocks that do not divide dim, several time blocks and strided delta."""
    from mamba_bio_audio.kernels.selective_scan.forward import SOFTPLUS_BLOCK_T, dt_input
    from mamba_bio_audio.kernels.selective_scan.function import reset_exponents

    torch.manual_seed(0)
    batch, dim, seqlen = 2, 11, 2 * SOFTPLUS_BLOCK_T + 5
    delta = torch.randn(dim, batch, seqlen).transpose(0, 1)  # channel-major view: stride_b != dim * seqlen
    bias = torch.randn(dim)
    seq_idx = torch.randint(0, 2, (batch, seqlen)).cumsum(1)
    starts = torch.zeros(batch, seqlen, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    delta[:, 3][starts] = -200.0 - bias[3]  # channel 3: softplus underflows to 0 at every start
    plain, _ = dt_input(delta, bias, True)
    marked, none = dt_input(delta, bias, True, reset_exponents(seq_idx, torch.device("cpu")))
    assert none is None and bool(starts.any()) and bool((plain[:, 3][starts] == 0).all())
    assert torch.equal(marked.abs(), plain)
    assert torch.equal(torch.signbit(marked), starts[:, None, :].expand(batch, dim, seqlen))
