"""Fused Triton selective scan vs the float64 sequential oracle: outputs, last_state and every gradient.

CPU cases run the kernels under the Triton interpreter at tiny sizes with small chunks, so that chunk, segment and
channel-block boundaries are all crossed. GPU cases (``-m gpu``, with TRITON_INTERPRET=0) use realistic sizes.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from mamba_bio_audio.kernels.selective_scan import backward, plan  # noqa: E402
from mamba_bio_audio.kernels.selective_scan.function import selective_scan_triton  # noqa: E402
from mamba_bio_audio.kernels.selective_scan.naive import selective_scan_naive  # noqa: E402
from mamba_bio_audio.kernels.selective_scan.plan import autotune_candidates  # noqa: E402
from mamba_bio_audio.kernels.utils import softplus_approx  # noqa: E402

from helpers import poison_empty  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
cpu_only = pytest.mark.skipif(not INTERPRETING, reason="CPU cases need TRITON_INTERPRET=1")
NAMES = ["out", "last_state", "u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Kernel outputs start as NaN, so an element a kernel forgets to write fails the comparison."""
    poison_empty(monkeypatch)


def make_inputs(batch, dim, seqlen, d_state, *, bc="varying", groups=1, z=True, D=True, bias=True, h0=False,
                seed=0, device="cpu"):
    """float64 leaves in the naive oracle's argument order (B/C layout by ``bc``), None for absent ones."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device)

    def bc_tensor():
        if bc == "fixed":
            return randn(dim, d_state)
        if bc == "varying":
            return randn(batch, d_state, seqlen)
        return randn(batch, groups, d_state, seqlen)

    A = -(torch.rand(dim, d_state, generator=g, dtype=torch.float64) * 2 + 0.1).to(device)
    return [
        randn(batch, dim, seqlen), randn(batch, dim, seqlen, scale=0.5), A, bc_tensor(), bc_tensor(),
        randn(dim) if D else None, randn(batch, dim, seqlen) if z else None,
        randn(dim, scale=0.5) if bias else None, randn(batch, dim, d_state) if h0 else None,
    ]


def run(fn, leaves, dtype, softplus, seed, last_grad=True, out_grad=True, **kw):
    """out, last_state and the gradients of every leaf, for loss = <out, g_out> + <last_state, g_last>."""
    xs = [x.detach().to(dtype).requires_grad_(True) if x is not None else None for x in leaves]
    out, last = fn(*xs[:8], delta_softplus=softplus, return_last_state=True, initial_state=xs[8], **kw)
    g = torch.Generator().manual_seed(seed + 1)
    loss = 0
    if out_grad:
        loss = loss + (out * torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)).sum()
    if last_grad:
        loss = loss + (last * torch.randn(last.shape, generator=g, dtype=torch.float64).to(last)).sum()
    present = [x for x in xs if x is not None]
    grads = iter(torch.autograd.grad(loss, present, allow_unused=True))
    return [out, last] + [next(grads) if x is not None else None for x in xs]


def assert_matches(leaves, dtype=torch.float32, softplus=True, seed=0, tol=None, last_grad=True, out_grad=True,
                   **kw):
    tol = tol or (1e-5 if dtype in (torch.float32, torch.float64) else 1e-2)
    # The oracle sees exactly the (rounded) values the kernel sees.
    ref = run(selective_scan_naive, [x.to(dtype).double() if x is not None else None for x in leaves],
              torch.float64, softplus, seed, last_grad, out_grad)
    got = run(selective_scan_triton, leaves, dtype, softplus, seed, last_grad, out_grad, **kw)
    for name, a, r, leaf in zip(NAMES, got, ref, [None, None, *leaves]):
        if r is None:  # absent input, or one the loss does not depend on
            assert a is None or not a.any(), f"{name}: gradient should be zero"
            continue
        assert a is not None, f"{name}: no gradient"
        assert a.shape == r.shape, f"{name}: shape {tuple(a.shape)} != {tuple(r.shape)}"
        if leaf is not None:
            assert a.dtype == dtype or name in ("A", "D", "delta_bias", "initial_state"), f"{name}: dtype {a.dtype}"
        assert torch.isfinite(a).all(), f"{name}: non-finite values"
        err = ((a.double() - r).norm() / r.norm().clamp_min(1e-30)).item()
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


SMALL = dict(chunk_size=4, block_d=4)


@cpu_only
@pytest.mark.parametrize(
    "case",
    [
        dict(shape=(2, 6, 21, 4)),  # dim not a multiple of block_d, seqlen not a multiple of chunk_size
        dict(shape=(2, 5, 1, 4)),  # one step
        dict(shape=(1, 4, 9, 1)),  # d_state 1
        dict(shape=(2, 3, 10, 16), kw=dict(chunk_size=8, block_d=2)),
        dict(shape=(1, 2, 6, 64), kw=dict(chunk_size=4, block_d=2)),
        dict(shape=(2, 5, 13, 3)),  # d_state padded to 4
        dict(shape=(2, 8, 11, 4), bc="grouped", groups=2),
        dict(shape=(2, 8, 11, 4), bc="grouped", groups=4, kw=dict(chunk_size=4, block_d=2)),
        dict(shape=(2, 6, 11, 4), bc="fixed"),
        dict(shape=(2, 6, 11, 4), z=False, D=False, bias=False, softplus=False),
        dict(shape=(2, 6, 17, 4), h0=True),
        # the three below take longest under the interpreter: the slow step runs them
        pytest.param(dict(shape=(2, 6, 23, 4), h0=True, kw=dict(chunk_size=4, block_d=4, n_segments=3)),
                     marks=pytest.mark.slow),
        dict(shape=(1, 4, 23, 4), bc="fixed", h0=True, kw=dict(chunk_size=4, block_d=4, n_segments=4)),
        # states saved every 2 or 3 chunks: save groups that end mid-sequence and straddle time segments
        dict(shape=(2, 6, 23, 4), h0=True, kw=dict(chunk_size=4, block_d=4, save_every=2)),
        pytest.param(dict(shape=(2, 6, 37, 4), h0=True, kw=dict(chunk_size=4, block_d=4, save_every=3, n_segments=3)),
                     marks=pytest.mark.slow),
        pytest.param(dict(shape=(2, 8, 30, 4), bc="grouped", groups=2, kw=dict(chunk_size=4, block_d=2, save_every=4)),
                     marks=pytest.mark.slow),
        # every tile inside the shapes (Plan.even: the kernels' masks become constants), with segments, B/C
        # groups, an initial state, save groups and no gate
        dict(shape=(2, 8, 16, 4), h0=True),
        dict(shape=(2, 8, 32, 4), bc="grouped", groups=2, h0=True, kw=dict(chunk_size=4, block_d=4, n_segments=2)),
        dict(shape=(1, 4, 24, 4), bc="fixed", kw=dict(chunk_size=4, block_d=4, save_every=2)),
        # the unsaved states recomputed in a pass of their own, all save groups at once
        dict(shape=(2, 6, 23, 4), h0=True, kw=dict(chunk_size=4, block_d=4, save_every=2, parallel_recompute=True)),
        dict(shape=(2, 8, 37, 4), bc="grouped", groups=2, h0=True,
             kw=dict(chunk_size=4, block_d=2, save_every=3, n_segments=3, parallel_recompute=True)),
        dict(shape=(2, 4, 8, 4), z=False, D=False, bias=False, softplus=False),
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()).replace(" ", ""),
)
def test_fp32_matches_oracle(case):
    case = dict(case)
    kw = case.pop("kw", SMALL)
    softplus = case.pop("softplus", True)
    shape = case.pop("shape")
    leaves = make_inputs(*shape, seed=sum(shape), **case)
    assert_matches(leaves, softplus=softplus, seed=sum(shape), **kw)


@cpu_only
@pytest.mark.parametrize("bias", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_softplus_over_a_wide_range(bias):
    """delta + bias from about -18 to 18: dt from ~1e-8 to 18, so the softplus pass and the sigmoid recovered
    from dt in the backward (series below dt = 1/16, 1 - exp(-dt) above) are both exercised."""
    leaves = make_inputs(2, 6, 21, 4, seed=7, bias=bias)
    leaves[1] = leaves[1] * 12  # delta: scale 0.5 -> 6
    assert_matches(leaves, softplus=True, seed=7, **SMALL)


@cpu_only
def test_backward_in_waves(monkeypatch, deterministic):
    """Deterministic mode: dB/dC partials bounded to one channel block per launch; waves that split B/C groups
    still sum right."""
    monkeypatch.setattr(backward, "PARTIAL_BYTES", 1)
    leaves = make_inputs(2, 12, 9, 4, bc="grouped", groups=2, h0=True, seed=8)
    assert_matches(leaves, seed=8, **SMALL)


@cpu_only
@pytest.mark.parametrize("bc", ["input", pytest.param("grouped", marks=pytest.mark.slow)])
def test_deterministic_mode_matches_and_repeats(deterministic, bc):
    """Under torch.use_deterministic_algorithms the varying dB/dC come from per-program partials (no atomics):
    right, and bitwise the same on a second run."""
    leaves = make_inputs(2, 12, 13, 4, bc=bc, groups=2, seed=9)
    assert_matches(leaves, seed=9, **SMALL)
    first = run(selective_scan_triton, leaves, torch.float32, True, 9, **SMALL)
    second = run(selective_scan_triton, leaves, torch.float32, True, 9, **SMALL)
    for a, b in zip(first, second):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.fixture
def deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def _channel_major(x: torch.Tensor) -> torch.Tensor:
    """The same values as x (batch, rows, seqlen), stored as one (rows, batch * seqlen) matrix: strides
    (seqlen, batch * seqlen, 1), as a projection's output viewed per batch row."""
    batch, rows, seqlen = x.shape
    return x.permute(1, 0, 2).contiguous().view(rows, batch, seqlen).permute(1, 0, 2)


@cpu_only
@pytest.mark.slow
def test_strided_layouts_match_contiguous():
    """u, delta, z channel-major (no copies); B, C views of one (batch, 2 * d_state, seqlen) product; dout in
    another layout: same out and gradients as contiguous inputs."""
    torch.manual_seed(3)
    batch, dim, seqlen, d_state = 2, 6, 19, 4
    u, delta, z = (torch.randn(batch, dim, seqlen) for _ in range(3))
    BC = torch.randn(batch, 2 * d_state + 3, seqlen)
    A = -torch.rand(dim, d_state) - 0.5
    D, bias = torch.randn(dim), torch.randn(dim) * 0.5
    g = torch.randn(batch, dim, seqlen)

    def grads(u, delta, z, BC):
        leaves = [t.detach().clone().requires_grad_(True) for t in (u, delta, z, BC)]  # clone keeps the strides
        assert leaves[0].stride() == u.stride()
        B, C = leaves[3][:, 3:3 + d_state], leaves[3][:, 3 + d_state:]
        out = selective_scan_triton(leaves[0], leaves[1], A, B, C, D, leaves[2], bias, delta_softplus=True, **SMALL)
        return [out] + list(torch.autograd.grad(out, leaves, g.transpose(1, 2).contiguous().transpose(1, 2)))

    reference = grads(u, delta, z, BC.contiguous())
    strided = grads(_channel_major(u), _channel_major(delta), _channel_major(z), BC)
    for a, r in zip(strided, reference):
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-6), (a - r).abs().max()


@cpu_only
def test_bf16_inputs():
    leaves = make_inputs(2, 6, 19, 4, h0=True, seed=3)
    assert_matches(leaves, dtype=torch.bfloat16, seed=3, **SMALL)


@cpu_only
def test_float64_inputs_compute_in_fp32():
    leaves = make_inputs(1, 4, 9, 4, seed=4)
    assert_matches(leaves, dtype=torch.float64, seed=4, **SMALL)


@cpu_only
@pytest.mark.parametrize("out_grad,last_grad", [(False, True), (True, False)])
def test_gradient_through_one_output(out_grad, last_grad):
    leaves = make_inputs(2, 4, 10, 4, h0=True, seed=5)
    assert_matches(leaves, seed=5, out_grad=out_grad, last_grad=last_grad, **SMALL)


@cpu_only
def test_non_contiguous_inputs():
    u, delta, A, B, C, D, z, bias, _ = make_inputs(2, 6, 10, 4, seed=6)
    # Same values, strided storage: time-major buffers viewed as (batch, dim, seqlen).
    leaves = [u.transpose(1, 2).contiguous().transpose(1, 2), delta.transpose(1, 2).contiguous().transpose(1, 2),
              A.t().contiguous().t(), B.transpose(1, 2).contiguous().transpose(1, 2), C[:, :, :], D, z,
              bias, None]
    assert not leaves[0].is_contiguous()
    assert_matches(leaves, seed=6, **SMALL)


@cpu_only
def test_seqlen_zero():
    u, delta, A, B, C, D, z, bias, h0 = (x.float() for x in make_inputs(2, 3, 0, 4, h0=True, seed=7))
    h0.requires_grad_(True)
    out, last = selective_scan_triton(u, delta, A, B, C, D, z, bias, True, True, h0)
    assert out.shape == (2, 3, 0)
    torch.testing.assert_close(last, h0)
    (grad,) = torch.autograd.grad(last.sum(), h0)
    torch.testing.assert_close(grad, torch.ones_like(h0))


def test_autotune_candidates_are_kwargs():
    for cfg in autotune_candidates():
        assert set(cfg) <= {"chunk_size", "block_d", "num_warps", "n_segments", "num_stages", "save_every"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING, reason="needs CUDA and TRITON_INTERPRET=0")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "case",
    [dict(), dict(bc="grouped", groups=4), dict(bc="fixed", h0=True), dict(h0=True, kw=dict(n_segments=4))],
    ids=["varying", "grouped", "fixed-h0", "segments-h0"],
)
def test_gpu_realistic(dtype, case):
    case = dict(case)
    kw = case.pop("kw", {})
    leaves = make_inputs(2, 96, 2048, 16, device="cuda", seed=11, **case)
    assert_matches(leaves, dtype=dtype, seed=11, **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING, reason="needs CUDA and TRITON_INTERPRET=0")
@pytest.mark.parametrize("cfg", autotune_candidates(), ids=str)
def test_gpu_autotune_candidates(cfg):
    leaves = make_inputs(2, 80, 1000, 16, h0=True, device="cuda", seed=12)
    assert_matches(leaves, seed=12, **cfg)


def test_auto_save_every_keeps_saved_states_under_budget():
    """1 at training shapes; powers of 2 (at most MAX_SAVE_EVERY) once the states would pass the budget."""
    budget = plan.SAVED_STATE_BYTES
    assert plan.auto_save_every(budget) == 1
    assert plan.auto_save_every(budget + 1) == 2
    assert plan.auto_save_every(4 * budget) == 4
    assert plan.auto_save_every(1000 * budget) == plan.MAX_SAVE_EVERY


# ---- softplus in the scan kernels (softplus_in_kernel=True): no fp32 dt buffer ----

IN_KERNEL_CASES = [
    dict(shape=(2, 6, 21, 4)),
    dict(shape=(2, 6, 21, 4), bias=False),  # softplus of delta alone
    dict(shape=(2, 6, 17, 4), h0=True),  # d initial_state reads dt_0 (softplus of the first step)
    dict(shape=(1, 4, 23, 4), bc="fixed", h0=True, kw=dict(chunk_size=4, block_d=4, n_segments=4)),
    dict(shape=(2, 6, 23, 4), h0=True, kw=dict(chunk_size=4, block_d=4, save_every=2)),
    dict(shape=(2, 8, 11, 4), bc="grouped", groups=2),
]


@cpu_only
@pytest.mark.parametrize("case", IN_KERNEL_CASES,
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()).replace(" ", ""))
def test_softplus_in_kernel_matches_oracle(case):
    """The kernels' own softplus (approximate exp2/log2 with a Taylor branch) against the fp64 oracle: outputs and
    every gradient, with and without bias, segments, save groups, grouped and fixed B/C."""
    case = dict(case)
    kw = case.pop("kw", SMALL)
    shape = case.pop("shape")
    leaves = make_inputs(*shape, seed=sum(shape) + 1, **case)
    assert_matches(leaves, softplus=True, seed=sum(shape) + 1, softplus_in_kernel=True, **kw)


@cpu_only
def test_softplus_in_kernel_over_a_wide_range():
    """delta + bias from about -18 to 18 (dt ~1e-8 to 18): both branches of the in-kernel softplus and of the
    sigmoid the backward recovers from dt."""
    leaves = make_inputs(2, 6, 21, 4, seed=8)
    leaves[1] = leaves[1] * 12
    assert_matches(leaves, softplus=True, seed=8, softplus_in_kernel=True, **SMALL)


@cpu_only
def test_softplus_in_kernel_allocates_no_dt_buffer(monkeypatch):
    """With softplus_in_kernel no float32 (batch, dim, seqlen) tensor is allocated in forward or backward (the
    softplus pass's buffer); without it, one per direction."""
    from mamba_bio_audio.kernels import utils

    shape = (2, 6, 21)
    seen = []
    real_empty = utils.empty

    def spy(*size, like, dtype=None):
        if dtype == torch.float32 and size == (2 * 6 * 21,):  # empty_as(delta, float32): its span
            seen.append(size)
        return real_empty(*size, like=like, dtype=dtype)

    monkeypatch.setattr(utils, "empty", spy)
    for in_kernel, expected in ((False, 2), (True, 0)):
        seen.clear()
        leaves = make_inputs(*shape, 4, seed=3)
        run(selective_scan_triton, leaves, torch.float32, True, 3, softplus_in_kernel=in_kernel, **SMALL)
        assert len(seen) == expected, (in_kernel, seen)


@triton.jit
def _softplus_approx_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + i, softplus_approx(tl.load(x_ptr + i, mask=i < n, other=0.0)), mask=i < n)


def softplus_approx_on(x: torch.Tensor) -> torch.Tensor:
    """kernels.utils.softplus_approx applied elementwise by a Triton kernel (fp32 in and out)."""
    y = torch.empty_like(x)
    _softplus_approx_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    return y


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=cpu_only),
                                    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
                                        not torch.cuda.is_available() or INTERPRETING,
                                        reason="needs CUDA and TRITON_INTERPRET=0")])])
def test_softplus_approx_relative_error(device):
    """Against fp64 softplus over x in [-40, 40] (dt from 4e-18 to 40), including both sides of the Taylor branch
    (e^-|x| = 1/16 at |x| = 2.77): relative error below 1e-5 (on the GPU: MUFU ex2 / log2)."""
    x = torch.cat([torch.linspace(-40, 40, 20001, dtype=torch.float64),
                   torch.tensor([-2.7726, -2.7725, 2.7725, 2.7726, 0.0, -0.0], dtype=torch.float64)])
    got = softplus_approx_on(x.float().to(device)).double().cpu()
    want = torch.nn.functional.softplus(x.float().double())
    err = ((got - want).abs() / want).max().item()
    assert torch.isfinite(got).all() and err < 1e-5, err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING, reason="needs CUDA and TRITON_INTERPRET=0")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kw", [dict(), dict(n_segments=4), dict(save_every=4)], ids=["plain", "segments", "save4"])
def test_gpu_softplus_in_kernel(dtype, kw):
    leaves = make_inputs(2, 96, 2048, 16, h0=True, device="cuda", seed=13)
    assert_matches(leaves, dtype=dtype, seed=13, softplus_in_kernel=True, **kw)


@cpu_only
def test_ops_scan_softplus_from_environment(monkeypatch):
    """MBA_SCAN_SOFTPLUS=kernel reaches the Triton scan through ops (no fp32 dt buffer allocated); a value other
    than pass / kernel is refused with the variable's name."""
    from mamba_bio_audio import ops
    from mamba_bio_audio.kernels import utils

    leaves = [x.float() if x is not None else None for x in make_inputs(2, 6, 21, 4, seed=5)]
    buffers = []
    real_empty = utils.empty

    def spy(*size, like, dtype=None):
        if dtype == torch.float32 and size == (2 * 6 * 21,):
            buffers.append(size)
        return real_empty(*size, like=like, dtype=dtype)

    monkeypatch.setattr(utils, "empty", spy)
    outs = {}
    for mode in ("pass", "kernel"):
        monkeypatch.setenv("MBA_SCAN_SOFTPLUS", mode)
        buffers.clear()
        outs[mode] = ops.selective_scan_fn(*leaves[:8], delta_softplus=True, backend="triton")
        assert len(buffers) == (1 if mode == "pass" else 0), mode
    assert ((outs["pass"] - outs["kernel"]).norm() / outs["pass"].norm()).item() < 1e-5
    monkeypatch.setenv("MBA_SCAN_SOFTPLUS", "fast")
    with pytest.raises(ValueError, match="MBA_SCAN_SOFTPLUS"):
        ops.selective_scan_fn(*leaves[:8], delta_softplus=True, backend="triton")


@cpu_only
@pytest.mark.parametrize("variant", ["triton-kernel-softplus", "triton-lean"])
def test_bench_scan_triton_variants_run(variant):
    """``mba bench scan --backends triton-kernel-softplus,triton-lean`` rows: the variant's keywords reach the
    scan (a bad keyword would leave an error in the row) and both directions run."""
    from mamba_bio_audio.benchmarks.options import parse_backends
    from mamba_bio_audio.benchmarks.scan import TRITON_VARIANTS, bench_one

    assert parse_backends(variant) == [variant] and variant in TRITON_VARIANTS
    row = bench_one(variant, (1, 4, 16), 2, torch.float32, "cpu")
    assert "error" not in row and row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0, row


@pytest.mark.parametrize("shape, kw, even", [
    ((2, 8, 16, 4), SMALL, True),
    ((2, 8, 32, 4), dict(chunk_size=4, block_d=4), True),
    ((2, 6, 21, 4), SMALL, False),  # seqlen not a multiple of the chunk
    ((2, 6, 16, 4), SMALL, False),  # dim not a multiple of block_d
    ((2, 8, 16, 3), SMALL, False),  # d_state padded to 4
])
def test_even_plan(shape, kw, even):
    """The kernels drop their masks (EVEN) exactly when no tile reaches past the shapes; the oracle cases above
    cover both kinds."""
    from mamba_bio_audio.kernels.selective_scan.plan import make_plan

    batch, dim, seqlen, d_state = shape
    u, A = torch.zeros(batch, dim, seqlen), torch.zeros(dim, d_state)
    B = torch.zeros(batch, d_state, seqlen)
    assert make_plan(u, A, B, B, kw["chunk_size"]).even(kw["block_d"]) is even


def test_automatic_register_cap_only_where_it_saves_a_wave():
    """The cap (12 one-warp programs per SM instead of 8) where the grid needs more than one wave uncapped and
    one capped, as at (8, 1536, 2048) on an H100 (1,536 programs, 132 SMs), not where many waves run either way
    (where it measured slower), nor off CUDA or with more warps per program."""
    assert plan.auto_bwd_maxnreg(1536, 1, 132) == 168
    assert plan.auto_bwd_maxnreg(8 * 132 + 1, 1, 132) == 168 and plan.auto_bwd_maxnreg(12 * 132, 1, 132) == 168
    assert plan.auto_bwd_maxnreg(8 * 132, 1, 132) is None  # one wave already
    assert plan.auto_bwd_maxnreg(12 * 132 + 1, 1, 132) is None and plan.auto_bwd_maxnreg(12672, 1, 132) is None
    assert plan.auto_bwd_maxnreg(1536, 2, 132) is None and plan.auto_bwd_maxnreg(1536, 1, None) is None


def test_backward_register_cap_reaches_the_backward_launch(monkeypatch):
    # MBA_SCAN_BWD_MAXNREG (or bwd_maxnreg=) becomes the main backward kernel's maxnreg launch option (the
    # interpreter ignores it: recorded here, not run); 0 lifts the cap, other values outside 24 .. 255 stop
    from mamba_bio_audio.kernels.selective_scan import function

    u = torch.zeros(1, 8, 16)
    monkeypatch.setenv("MBA_SCAN_BWD_MAXNREG", "168")
    assert function.default_tunables(u, 4).bwd_maxnreg == 168
    assert function.default_tunables(u, 4, bwd_maxnreg=200).bwd_maxnreg == 200
    monkeypatch.setenv("MBA_SCAN_BWD_MAXNREG", "0")
    assert function.default_tunables(u, 4).bwd_maxnreg is None
    for bad in ("many", "300"):
        monkeypatch.setenv("MBA_SCAN_BWD_MAXNREG", bad)
        with pytest.raises(ValueError, match="MBA_SCAN_BWD_MAXNREG"):
            function.default_tunables(u, 4)
    monkeypatch.setenv("MBA_SCAN_BWD_MAXNREG", "auto")
    assert function.default_tunables(u, 4).bwd_maxnreg == plan.AUTO_BWD_MAXNREG
    monkeypatch.delenv("MBA_SCAN_BWD_MAXNREG")
    assert function.default_tunables(u, 4).bwd_maxnreg == plan.DEFAULT_BWD_MAXNREG == plan.AUTO_BWD_MAXNREG

    options = []
    launch = type(backward._bwd_kernel).__getitem__

    def record(kernel, grid):
        run = launch(kernel, grid)
        return lambda *a, **k: options.append(k.get("maxnreg")) or run(*a, **k)

    monkeypatch.setattr(type(backward._bwd_kernel), "__getitem__", record)
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(1, 8, 16, generator=g, requires_grad=True) for _ in range(2)]
    A = -torch.rand(8, 4, generator=g)
    B, C = torch.randn(1, 4, 16, generator=g), torch.randn(1, 4, 16, generator=g)
    out = selective_scan_triton(x[0], x[1], A, B, C, delta_softplus=True, bwd_maxnreg=168, chunk_size=4, block_d=4)
    out.sum().backward()
    assert 168 in options


@cpu_only
@pytest.mark.parametrize("case", [
    dict(shape=(2, 6, 21, 4), kw=dict()),
    dict(shape=(2, 6, 23, 4), kw=dict(save_every=2, n_segments=3)),
    dict(shape=(1, 4, 16, 4), kw=dict(save_every=4), packed=True),
    dict(shape=(2, 5, 13, 3), kw=dict(), z=False),
], ids=["plain", "save2-segments", "save4-packed", "no-gate"])
def test_backward_writes_the_forwards_output_again(case):
    """scan_backward(y_out=): the forward's output recomputed from the saved states (a caller keeps no y for a
    product after the scan, e.g. out_proj inside the fused mixer), every element written (NaN-poisoned), the
    gradients bitwise those of a backward without it."""
    from mamba_bio_audio.kernels.selective_scan import function

    batch, dim, seqlen, d_state = case["shape"]
    u, delta, A, B, C, D, z, bias, _ = [x.float() if x is not None else None for x in make_inputs(
        batch, dim, seqlen, d_state, z=case.get("z", True), seed=seqlen)]
    reset = None
    if case.get("packed"):
        seq_idx = torch.zeros(batch, seqlen, dtype=torch.int64)
        seq_idx[:, 7:] = 1
        reset = function.reset_exponents(seq_idx, u.device)
    tun = function.default_tunables(u, d_state, **SMALL, **case["kw"])
    out, _, saved, meta = function.scan_forward(u, delta, A, B, C, D, z, bias, None, reset, True, tun)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    y = torch.full_like(u, float("nan"))
    with_y = function.scan_backward(dout, None, saved, meta, y_out=y)
    without = function.scan_backward(dout, None, saved, meta)
    assert ((y - out).norm() / out.norm()).item() < 1e-6
    for got, want in zip(with_y, without):
        assert (got is None and want is None) or torch.equal(got, want)
    with pytest.raises(ValueError, match="y_out"):
        function.scan_backward(dout, None, saved, meta, y_out=y.transpose(1, 2).contiguous().transpose(1, 2)[:, :, :-1])


def test_recompute_mode_from_environment(monkeypatch):
    from mamba_bio_audio.kernels.selective_scan import function

    u = torch.zeros(1, 4, 8)
    monkeypatch.delenv(plan.RECOMPUTE_ENV, raising=False)
    assert function.default_tunables(u, 4).parallel_recompute is (plan.DEFAULT_RECOMPUTE == "parallel")
    monkeypatch.setenv(plan.RECOMPUTE_ENV, "parallel")
    assert function.default_tunables(u, 4).parallel_recompute is True
    assert function.default_tunables(u, 4, parallel_recompute=False).parallel_recompute is False
    monkeypatch.setenv(plan.RECOMPUTE_ENV, "Inline")
    assert function.default_tunables(u, 4).parallel_recompute is False
    monkeypatch.setenv(plan.RECOMPUTE_ENV, "sometimes")
    with pytest.raises(ValueError, match=plan.RECOMPUTE_ENV):
        function.default_tunables(u, 4)
