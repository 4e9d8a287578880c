"""Count the SASS instructions of the Triton scan kernels for sm_90, offline (no GPU needed).

    python dev/sass_count.py [fwd|bwd ...] [--chunk 8 --block-d 8 --warps 1]

Compiles with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``, disassembles with the
cuobjdump bundled with Triton, and prints the instruction count per opcode class for the whole kernel and for its
hottest loop (the longest backward branch target range). Used to compare kernel variants before spending GPU time.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import types

try:
    import torch  # noqa: F401
except ImportError:  # a Triton-only environment (e.g. another Triton version): stub what the module body touches
    _torch = types.ModuleType("torch")
    _torch.autograd = types.SimpleNamespace(Function=object)
    sys.modules["torch"] = _torch
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
if "mamba_bio_audio" not in sys.modules:  # not installed here: map mamba_bio_audio.kernels to the repo's kernels/
    try:
        import mamba_bio_audio.kernels  # noqa: F401
    except ImportError:
        import kernels

        sys.modules["mamba_bio_audio"] = types.ModuleType("mamba_bio_audio")
        sys.modules["mamba_bio_audio.kernels"] = kernels

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

_module = os.environ.get("SCAN_MODULE")  # a variant to try: defines _fwd_kernel, _bwd_kernel and the DEFAULT_*
if _module:
    _spec = importlib.util.spec_from_file_location("scan_variant", _module)
    ts = importlib.util.module_from_spec(_spec)
    sys.modules["scan_variant"] = ts
    _spec.loader.exec_module(ts)
else:
    # through the package (mapped above when not installed): a top-level "kernels" may be PyPI's package
    from mamba_bio_audio.kernels.selective_scan import backward as _backward  # noqa: E402
    from mamba_bio_audio.kernels.selective_scan import forward as _forward  # noqa: E402
    from mamba_bio_audio.kernels.selective_scan import plan as _plan  # noqa: E402

    ts = types.SimpleNamespace(**vars(_plan), _fwd_kernel=_forward._fwd_kernel, _bwd_kernel=_backward._bwd_kernel)


def compile_kernel(kernel, constexprs: dict, dtypes: dict, num_warps: int):
    params = kernel.params
    source = ASTSource
    sig = {}
    for p in params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            sig[p.name] = "*" + dtypes.get(p.name, "fp32")
        else:
            sig[p.name] = "i32"
    # as a real launch specializes them: 16-byte aligned pointers, sizes divisible by 16
    aligned = {"seqlen", "dim", "d_state", "channels_per_group"}
    attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params)
             if not p.is_constexpr and (p.name.endswith("_ptr") or p.name in aligned)}
    src = source(fn=kernel, signature=sig, constexprs=dict(constexprs), attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def captured_launches(shape: tuple[int, int, int], d_state: int = 16, sms: int = 132, **scan_kwargs) -> list:
    """[(kernel, args, kwargs)] of every Triton launch one fwd+bwd of the scan makes at ``shape`` (batch, dim,
    seqlen), bf16 inputs as ``mba bench scan`` makes them: the wrappers run on meta tensors with each launch
    recorded instead of run (no package install needed), and the GPU's ``sms`` stand in for the device's
    (``plan.sm_count``) when the wrapper plans time segments. ``scan_kwargs`` go to ``selective_scan_triton`` (e.g. save_every, softplus_in_kernel)."""
    import torch

    from mamba_bio_audio.kernels.selective_scan import plan as plan_module
    from mamba_bio_audio.kernels.selective_scan.function import selective_scan_triton

    launches = []

    def record(self, grid):
        return lambda *args, **kwargs: launches.append((self, args, kwargs))

    from triton.runtime.interpreter import InterpretedFunction  # the kernels' class under TRITON_INTERPRET=1

    real_getitem, real_interpreted = triton.runtime.jit.JITFunction.__getitem__, InterpretedFunction.__getitem__
    real_sm_count = plan_module.sm_count
    triton.runtime.jit.JITFunction.__getitem__ = record
    InterpretedFunction.__getitem__ = record
    plan_module.sm_count = lambda device: sms  # the GPU's time-segment plan, not the CPU's
    try:
        batch, dim, seqlen = shape

        def meta(*size, dtype=torch.bfloat16):  # only shapes, dtypes and strides reach the specialisation
            return torch.empty(*size, device="meta", dtype=dtype, requires_grad=True)

        u, delta, z = (meta(batch, dim, seqlen) for _ in range(3))
        B, C = meta(batch, d_state, seqlen), meta(batch, d_state, seqlen)
        A, D, bias = meta(dim, d_state, dtype=torch.float32), meta(dim, dtype=torch.float32), meta(dim, dtype=torch.float32)
        out = selective_scan_triton(u, delta, A, B, C, D, z, bias, delta_softplus=True, **scan_kwargs)
        out.backward(torch.empty_like(out))
    finally:
        triton.runtime.jit.JITFunction.__getitem__ = real_getitem
        InterpretedFunction.__getitem__ = real_interpreted
        plan_module.sm_count = real_sm_count
    return launches


def compile_launch(kernel, args: tuple, kwargs: dict):
    """Compile ``kernel`` for sm_90 as ``kernel[grid](*args, **kwargs)`` would: Triton's own binder specialises
    the arguments (16-byte alignment of pointers, integers divisible by 16, integers equal to 1, constexprs)."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def sass(compiled) -> list[str]:
    cubin = compiled.asm["cubin"]
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    text = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    return [line for line in text.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", line)]


def opcode(line: str) -> str:
    body = line.split("*/", 1)[1].strip()
    body = re.sub(r"^@!?U?P\w+\s+", "", body)
    return body.split()[0].split(".")[0] if body else "?"


def classify(op: str) -> str:
    if op in ("SHFL",):
        return "shfl"
    if op in ("MUFU",):
        return "mufu"
    if op.startswith(("FFMA", "FMUL", "FADD", "FSEL", "FSETP", "FMNMX", "FCHK", "FSET")):
        return "fp32"
    if op.startswith(("LDG", "STG", "LDGSTS")):
        return "global"
    if op.startswith(("LDS", "STS", "BAR", "LDSM")):
        return "shared"
    if op.startswith(("IMAD", "IADD", "LEA", "ISETP", "LOP", "SHF", "SEL", "IABS", "IMNMX", "PRMT", "SGXT", "UIADD",
                      "ULEA", "UISETP", "UIMAD", "USEL", "ULOP", "USHF", "UMOV", "PLOP", "P2R", "R2P", "IMUL", "VIADD")):
        return "int/addr"
    if op.startswith(("MOV", "S2R", "S2UR", "CS2R", "R2UR")):
        return "mov"
    if op.startswith(("F2F", "F2I", "I2F", "F2FP", "HADD", "HMUL", "HFMA")):
        return "convert/half"
    return "other"


def loop_ranges(lines: list[str]) -> list[tuple[int, int]]:
    addrs = [int(re.match(r"\s+/\*([0-9a-f]{4,})\*/", ln).group(1), 16) for ln in lines]
    ranges = []
    for i, ln in enumerate(lines):
        if "BRA" in ln:
            tgt = re.search(r"0x([0-9a-f]+)", ln.split("BRA", 1)[1])
            if tgt:
                t = int(tgt.group(1), 16)
                if t < addrs[i]:
                    ranges.append((t, addrs[i]))
    return ranges


def report(name: str, lines: list[str]) -> None:
    counts = collections.Counter(classify(opcode(ln)) for ln in lines)
    print(f"{name}: {len(lines)} instructions  " + "  ".join(f"{k} {v}" for k, v in counts.most_common()))
    ranges = loop_ranges(lines)
    if ranges:
        lo, hi = max(ranges, key=lambda r: r[1] - r[0])
        body = [ln for ln in lines if lo <= int(re.match(r"\s+/\*([0-9a-f]{4,})\*/", ln).group(1), 16) <= hi]
        counts = collections.Counter(classify(opcode(ln)) for ln in body)
        print(f"  longest loop: {len(body)} instructions  " + "  ".join(f"{k} {v}" for k, v in counts.most_common()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", nargs="*", default=["fwd", "bwd"])
    ap.add_argument("--chunk", type=int, default=ts.DEFAULT_CHUNK)
    ap.add_argument("--block-d", type=int, default=ts.DEFAULT_BLOCK_D)
    ap.add_argument("--warps", type=int, default=ts.DEFAULT_NUM_WARPS)
    ap.add_argument("--stages", type=int, default=ts.DEFAULT_NUM_STAGES)
    ap.add_argument("--dump", help="write the SASS of the last kernel here")
    ap.add_argument("--ttgir", help="write the TritonGPU IR (layouts, conversions) of the last kernel here")
    ap.add_argument("--set", action="append", default=[], help="NAME=0|1: override a constexpr flag")
    ap.add_argument("--delta", choices=("fp32", "bf16"), default="fp32",
                    help="dtype of the delta the kernels read: fp32 (default: the softplus pass's dt buffer, what "
                         "training runs) or bf16 (counts in NOTES.md before 2026-12-07 used bf16)")
    ap.add_argument("--shape", help="B,D,L: compile every kernel one fwd+bwd launches at this bench shape, with the "
                                    "arguments and specialisation of the real launch")
    ap.add_argument("--save-every", type=int, default=None, help="with --shape: the scan's save_every")
    ap.add_argument("--softplus-in-kernel", action="store_true", help="with --shape: softplus inside the kernels")
    args = ap.parse_args()
    if args.shape:
        shape = tuple(int(v) for v in args.shape.split(","))
        seen = set()
        for kernel, kargs, kwargs in captured_launches(shape, save_every=args.save_every,
                                                       softplus_in_kernel=args.softplus_in_kernel or None):
            name = kernel.fn.__name__
            if name in seen:
                continue
            seen.add(name)
            compiled = compile_launch(kernel, kargs, kwargs)
            report(name, sass(compiled))
            if args.ttgir:
                with open(f"{args.ttgir}.{name}", "w") as f:
                    f.write(compiled.asm["ttgir"])
        return
    bf16 = {n: "bf16" for n in ("u_ptr", "delta_ptr", "z_ptr", "out_ptr", "B_ptr", "C_ptr", "dout_ptr", "du_ptr",
                                 "ddelta_ptr", "dz_ptr")}
    bf16["delta_ptr"] = args.delta
    # the training configuration: softplus precomputed by the wrapper, so the kernels add no bias
    common = dict(HAS_BIAS=False, BLOCK_D=args.block_d, BLOCK_N=16, CHUNK=args.chunk)
    # EVEN: the bench and training shapes divide the tiles (Plan.even); --set EVEN=0 for the masked variant
    stages = dict(STAGES=args.stages, SAVE_EVERY=1, EVEN=True)
    kernels = {
        "fwd": (ts._fwd_kernel, dict(common, **stages, HAS_D=True, HAS_Z=True, HAS_H0=False, B_VARYING=True, C_VARYING=True)),
        "bwd": (ts._bwd_kernel, dict(common, **stages, HAS_D=True, HAS_Z=True, HAS_H0=False, HAS_DLAST=False,
                                     DT_SOFTPLUS=True, WANT_DBIAS=True, Y_OUT=False,
                                     B_VARYING=True, C_VARYING=True)),
    }
    for name in args.which:
        kernel, constexprs = kernels[name]
        constexprs = dict(constexprs, **{k: bool(int(v)) for k, v in (kv.split("=") for kv in args.set)})
        compiled = compile_kernel(kernel, constexprs, bf16, args.warps)
        lines = sass(compiled)
        if args.ttgir:
            with open(args.ttgir, "w") as f:
                f.write(compiled.asm["ttgir"])
        report(name, lines)
        if args.dump:
            with open(args.dump, "w") as f:
                f.write("\n".join(lines))


if __name__ == "__main__":
    main()
