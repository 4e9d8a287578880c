"""Random inputs for scan tests (imported by test modules; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch


def scan_inputs(batch, dim, seqlen, d_state, *, bc="input", groups=1, dtype=torch.float64, seed=0,
                with_z=True, with_D=True, with_bias=True, with_init=True):
    """Keyword dict for selective_scan_*: fresh random inputs. bc: "fixed" | "input" | "grouped"."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    if bc == "fixed":
        B, C = r(dim, d_state), r(dim, d_state)
    elif bc == "input":
        B, C = r(batch, d_state, seqlen), r(batch, d_state, seqlen)
    else:
        B, C = r(batch, groups, d_state, seqlen), r(batch, groups, d_state, seqlen)
    return {
        "u": r(batch, dim, seqlen), "delta": r(batch, dim, seqlen, scale=0.5),
        "A": (-torch.rand(dim, d_state, generator=g, dtype=torch.float64) * 3 - 0.1).to(dtype),
        "B": B, "C": C, "D": r(dim) if with_D else None, "z": r(batch, dim, seqlen) if with_z else None,
        "delta_bias": r(dim, scale=0.3) if with_bias else None,
        "initial_state": r(batch, dim, d_state) if with_init else None,
    }


def tensor_inputs(kwargs):
    return {k: v for k, v in kwargs.items() if torch.is_tensor(v)}


def run_cli(args, capsys):
    """Run ``mba ARGS`` in-process: (exit code, stdout, stderr)."""
    import pytest

    from mamba_bio_audio.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    """A user mistake: exit code 2, one line on stderr naming each fragment, no traceback."""
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


# ---- shared by the Triton kernel tests (tests/kernels) ------------------------------------------------------------
def interpreting() -> bool:
    """Whether Triton kernels run on CPU tensors here (TRITON_INTERPRET=1, as in CI)."""
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernel_devices(pytest):
    """pytest params "cpu" (only under the interpreter) and "cuda" (marked gpu; needs CUDA, interpreter off)."""
    return [
        pytest.param("cpu", marks=pytest.mark.skipif(not interpreting(), reason="CPU cases need TRITON_INTERPRET=1")),
        pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
            not torch.cuda.is_available() or interpreting(), reason="needs CUDA and TRITON_INTERPRET=0")]),
    ]


def poison_empty(monkeypatch) -> None:
    """Make ``kernels.utils.empty`` (every kernel output's allocator) fill with NaN: unwritten elements fail the
    test."""
    from mamba_bio_audio.kernels import utils

    def nan_empty(*shape, like, dtype=None):
        return torch.full(shape, float("nan"), device=like.device, dtype=dtype or like.dtype)

    monkeypatch.setattr(utils, "empty", nan_empty)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ||a - b|| / ||b|| in float64 on the CPU (a and b may sit on different devices)."""
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_all_match(names, got, ref, tol: float) -> None:
    """Pairwise: both None, or the same shape, ``got`` finite and within ``tol`` relative error of ``ref``."""
    for name, a, r in zip(names, got, ref, strict=True):
        if r is None:
            assert a is None, name
            continue
        assert a.shape == r.shape and torch.isfinite(a).all(), name
        assert rel(a, r) <= tol, f"{name}: relative error {rel(a, r):.2e}"
