"""Packed rows (``seq_idx``) in the SaShiMi U-Net: clips packed into a row, each starting at a multiple of the
stride, get the logits and parameter gradients they get alone; a clip starting elsewhere is refused. Reference
backend, the Triton kernels (interpreted on CPU) and the GPU."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from mamba_bio_audio.errors import UserError  # noqa: E402
from mamba_bio_audio.models.sashimi import SashimiLM, preset  # noqa: E402
from mamba_bio_audio.modules.mixer import set_backend  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# pools (2, 2): stride 4. Five clips: 8 (two blocks), 4 (one block), 5 (a row's last, unaligned length); 16, 1
# (a one-sample clip last). Rows of 17 samples: the model pads them to 20 at the end.
ROWS = [[8, 4, 5], [16, 1]]


def model(backend: str = "reference", device: str = "cpu", dtype=torch.float64, **overrides) -> SashimiLM:
    """A tiny SaShiMi (float64 by default: equalities to rounding), every parameter noised."""
    torch.manual_seed(0)
    config = preset("tiny", **{"pools": (2, 2), "vocab_size": 32, **overrides})
    lm = SashimiLM(config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # noise on every parameter: no path trivially zero (e.g. fresh zero biases)
        for p in lm.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return set_backend(lm.to(device=device, dtype=dtype), backend)


def packed_batch(rows, seed: int = 0, device: str = "cpu"):
    """(input_ids, seq_idx, the clips in order)."""
    g = torch.Generator().manual_seed(seed)
    ids, idx, clips = [], [], []
    for row in rows:
        tokens = [torch.randint(0, 32, (n,), generator=g) for n in row]
        clips += tokens
        ids.append(torch.cat(tokens))
        idx.append(torch.cat([torch.full((n,), 7 * i + 2) for i, n in enumerate(row)]))  # only changes matter
    assert len({t.numel() for t in ids}) == 1
    return torch.stack(ids).to(device), torch.stack(idx).to(device), [c.to(device) for c in clips]


def packed_and_alone(lm: SashimiLM, rows=ROWS, device: str = "cpu"):
    ids, seq_idx, clips = packed_batch(rows, device=device)
    return lm(ids, seq_idx=seq_idx).flatten(0, 1), torch.cat([lm(c[None])[0] for c in clips])


@pytest.mark.parametrize("overrides", [{}, {"unet": False}, {"pools": (2, 3, 2), "expand": 1}],
                         ids=["unet", "no-unet", "three-levels"])
def test_packed_equals_one_by_one(overrides):
    lm = model(**overrides)
    stride = lm.config.stride
    rows = ROWS if stride == 4 else [[stride, 2 * stride, 5], [3 * stride, 5]]  # stride 12: 41 samples a row
    packed, alone = packed_and_alone(lm, rows)
    torch.testing.assert_close(packed, alone, rtol=1e-10, atol=1e-10)
    # every parameter's gradient: the packed loss is the sum of the clips' losses
    target = torch.randn(packed.shape, generator=torch.Generator().manual_seed(2), dtype=packed.dtype)
    params = list(lm.parameters())
    grads = torch.autograd.grad((packed * target).sum(), params)
    alone_grads = torch.autograd.grad((alone * target).sum(), params)
    for (name, _), a, b in zip(lm.named_parameters(), grads, alone_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_packed_differs_without_seq_idx():
    """The check above can fail: the same row without seq_idx (or with the pooled windows left unmasked) reads
    across the clip boundaries."""
    lm = model()
    ids, seq_idx, _ = packed_batch(ROWS)
    with torch.no_grad():
        packed = lm(ids, seq_idx=seq_idx)
        assert not torch.allclose(lm(ids), packed, atol=1e-3)
        # the blocks alone reset, the DownPool windows not: the coarse levels still see the previous clip
        pool = lm.stage.pool
        unmasked = pool.forward
        pool.forward = lambda x, runs=None: unmasked(x)
        try:
            assert not torch.allclose(lm(ids, seq_idx=seq_idx), packed, atol=1e-3)
        finally:
            del pool.forward


def test_one_clip_per_row_is_the_plain_forward():
    lm = model()
    ids = torch.randint(0, 32, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(lm(ids, seq_idx=torch.zeros_like(ids)), lm(ids), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows", [[[6, 6]], [[4, 3, 5]], [[4, 4], [1, 7]]], ids=["mid-block", "short", "row-1"])
def test_misaligned_start_refused(rows):
    lm = model()
    ids, seq_idx, _ = packed_batch(rows)
    with pytest.raises(UserError, match="multiples of the stride 4"):
        lm(ids, seq_idx=seq_idx)


def test_seq_idx_shape_refused():
    lm = model()
    ids, seq_idx, _ = packed_batch(ROWS)
    with pytest.raises(UserError, match="shape of input_ids"):
        lm(ids, seq_idx=seq_idx[:, :-1])


@pytest.mark.skipif(not INTERPRETING, reason="CPU tensors need TRITON_INTERPRET=1")
def test_packed_triton_interpreted():
    # one short row, three blocks: the interpreter runs every kernel program in Python
    lm = model("triton", dtype=torch.float32, unet=False)
    with torch.no_grad():
        packed, alone = packed_and_alone(lm, [[4, 1]])
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-5)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_packed_gpu(backend):
    """fp32 on CUDA against the fp64 reference: packing may add no more error than the fp32 run of the clips
    alone has. This noised model is ill-conditioned (its fp32 logits are ~2e-5 from its fp64 ones, relative, even
    on the CPU reference; a gradient summed over every position, such as an inner level's A_log, can be off by
    ~1e-3 in fp32), so packed and alone are each compared with the fp64 truth rather than with each other; a
    packing error is O(1) (test_packed_differs_without_seq_idx)."""
    size = dict(d_model=64, n_layers=2, d_state=16, pools=(4, 4))
    lm = model(backend, device="cuda", dtype=torch.float32, **size)
    reference = model(**size)  # fp64, CPU, the same parameters
    rows = [[64, 16, 37], [16, 96, 5]]
    packed, alone = packed_and_alone(lm, rows, device="cuda")
    truth = packed_and_alone(reference, rows)[1]

    def errors(a, b, truth):  # relative errors against the fp64 truth, and the bound packing must keep
        packed_error, alone_error = relative_error(a.cpu(), truth), relative_error(b.cpu(), truth)
        return packed_error, alone_error, max(3 * alone_error, 1e-5)

    packed_error, alone_error, bound = errors(packed, alone, truth)
    assert packed_error <= bound, f"logits: {packed_error:.2e} from fp64 packed, {alone_error:.2e} alone"
    names = [name for name, _ in lm.named_parameters()]
    grads = torch.autograd.grad(packed.square().mean(), list(lm.parameters()))
    alone_grads = torch.autograd.grad(alone.square().mean(), list(lm.parameters()))
    true_grads = torch.autograd.grad(truth.square().mean(), list(reference.parameters()))
    report = {name: errors(a, b, t) for name, a, b, t in zip(names, grads, alone_grads, true_grads)}
    worst = max(report, key=lambda name: report[name][0] / report[name][2])
    packed_error, alone_error, bound = report[worst]
    if packed_error > bound:  # for the message: the fp32 CPU reference's errors on the same parameter
        cpu32 = model(dtype=torch.float32, **size)
        cpu_packed, cpu_alone = packed_and_alone(cpu32, rows)
        k = names.index(worst)
        cpu_errors = [relative_error(torch.autograd.grad(out.square().mean(), list(cpu32.parameters()))[k],
                                     true_grads[k]) for out in (cpu_packed, cpu_alone)]
        raise AssertionError(f"gradient of {worst}: {packed_error:.2e} from fp64 packed, {alone_error:.2e} alone; "
                             f"fp32 on the CPU reference: {cpu_errors[0]:.2e} packed, {cpu_errors[1]:.2e} alone")
