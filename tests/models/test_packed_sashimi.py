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


def model(backend: str = "reference", device: str = "cpu", dtype=torch.float64, noise: float = 0.3,
          **overrides) -> SashimiLM:
    """A tiny SaShiMi (float64 by default: equalities to rounding), every parameter noised (normal, std noise)."""
    torch.manual_seed(0)
    config = preset("tiny", **{"pools": (2, 2), "vocab_size": 32, **overrides})
    lm = SashimiLM(config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # noise on every parameter: no path trivially zero (e.g. fresh zero biases)
        for p in lm.parameters():
            p.add_(torch.randn(p.shape, generator=g) * noise)
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


def packed_and_alone(lm: SashimiLM, rows=ROWS, device: str = "cpu", use_seq_idx: bool = True):
    """(logits of the packed rows, logits of the clips one by one), both (samples, vocab); use_seq_idx False: the
    packed rows without their seq_idx (a packing bug: clips read across their boundaries)."""
    ids, seq_idx, clips = packed_batch(rows, device=device)
    packed = lm(ids, seq_idx=seq_idx if use_seq_idx else None)
    return packed.flatten(0, 1), torch.cat([lm(c[None])[0] for c in clips])


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


# The fp32 check against the fp64 truth. Model noise 0.1: with 0.3 the tiny model is ill-conditioned and its fp32
# gradients scatter on the GPU even through plain torch ops (dev/packed_sashimi_diag.py on an H100, 2026-12-07:
# packed up to 6x further from fp64 than alone on some parameters with the reference backend, 7x with Triton, the
# same with TF32 off; at 0.1 every error is ~1e-6). A packing bug is O(1e-2) or more (the CPU test below).
GPU_NOISE = 0.1
GPU_SIZE = dict(d_model=64, n_layers=2, d_state=16, pools=(4, 4))
GPU_ROWS = [[64, 16, 37], [16, 96, 5]]
FLOOR = 1e-4  # relative error from fp64 that fp32 may always have


def errors_from_truth(lm: SashimiLM, reference: SashimiLM, device: str, use_seq_idx: bool = True) -> dict:
    """{"logits" or a parameter's name: (packed, alone) relative errors from the fp64 ``reference``}, the
    gradients those of the mean squared logits."""
    packed, alone = packed_and_alone(lm, GPU_ROWS, device=device, use_seq_idx=use_seq_idx)
    truth = packed_and_alone(reference, GPU_ROWS)[1]
    report = {"logits": (relative_error(packed.cpu(), truth), relative_error(alone.cpu(), truth))}
    grads = torch.autograd.grad(packed.square().mean(), list(lm.parameters()))
    alone_grads = torch.autograd.grad(alone.square().mean(), list(lm.parameters()))
    true_grads = torch.autograd.grad(truth.square().mean(), list(reference.parameters()))
    for (name, _), a, b, t in zip(lm.named_parameters(), grads, alone_grads, true_grads):
        report[name] = (relative_error(a.cpu(), t), relative_error(b.cpu(), t))
    return report


def worst_excess(report: dict) -> tuple[str, float, float]:
    """(name, packed error, alone error) of the entry whose packed error most exceeds max(3 alone, FLOOR)."""
    name = max(report, key=lambda k: report[k][0] / max(3 * report[k][1], FLOOR))
    return name, *report[name]


def test_truth_check_catches_a_packing_bug():
    """The GPU test's check can fail: fp32 on the CPU with the rows' seq_idx dropped is far outside its bound,
    and with seq_idx within it."""
    reference = model(noise=GPU_NOISE, **GPU_SIZE)
    cpu32 = model(dtype=torch.float32, noise=GPU_NOISE, **GPU_SIZE)
    name, packed_error, alone_error = worst_excess(errors_from_truth(cpu32, reference, "cpu"))
    assert packed_error <= max(3 * alone_error, FLOOR), (name, packed_error, alone_error)
    name, packed_error, alone_error = worst_excess(errors_from_truth(cpu32, reference, "cpu", use_seq_idx=False))
    assert packed_error > 100 * max(3 * alone_error, FLOOR), (name, packed_error, alone_error)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_packed_gpu(backend):
    """fp32 on CUDA against the fp64 reference: packing may add no more error than the fp32 run of the clips
    alone has (3x, or the floor FLOOR). Packed and alone are each compared with the fp64 truth rather than with
    each other: a gradient summed over every position carries fp32 rounding that differs between the two."""
    lm = model(backend, device="cuda", dtype=torch.float32, noise=GPU_NOISE, **GPU_SIZE)
    reference = model(noise=GPU_NOISE, **GPU_SIZE)  # fp64, CPU, the same parameters
    name, packed_error, alone_error = worst_excess(errors_from_truth(lm, reference, "cuda"))
    assert packed_error <= max(3 * alone_error, FLOOR), \
        f"{name}: {packed_error:.2e} from fp64 packed, {alone_error:.2e} alone"
