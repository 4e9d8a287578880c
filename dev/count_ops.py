"""Count what one training step asks of the host, per layer, without a GPU: torch operators and Triton launches.

    python dev/count_ops.py [--fused-inner off|triton] [--batch 2 --seqlen 64] [--decode]

On a GPU every torch operator that is not a view launches a kernel (or a copy / fill) from Python, and so does
every Triton launch; eagerly, their host cost adds up per step (#18: at (8, 2048) our eager step took 116.8 ms
against 79.5 ms as one CUDA graph on 2026-12-07). This runs a tiny MambaLM (Triton backend) through one forward,
backward and AdamW step on the CPU under ``TRITON_INTERPRET=1`` with every Triton launch recorded but not run, and
counts the aten operators the step dispatches (``TorchDispatchMode``), views apart. Two models, of 1 and 2 layers,
give the count per layer as their difference (the embedding, head, loss and optimizer are in both). The
interpreter's own tensor work never runs (the launches are not executed), so the counts are the model code's.

``--decode``: one recurrent decode step (no autograd) instead, the launches a CUDA graph of the step replays.

What it does not give: host time. A CPU operator costs a few microseconds of dispatch; on a GPU, launches and the
autograd engine add more, and the mix differs (autocast inserts casts on the GPU; AdamW's foreach kernels batch
parameters). ``dev/profile_step.py`` measures the real step on a GPU.
"""

from __future__ import annotations

import argparse
import collections
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

#: aten operators that only make a view (no kernel on a GPU)
VIEWS = frozenset({"view", "_unsafe_view", "t", "transpose", "permute", "as_strided", "unsqueeze", "squeeze",
                   "expand", "alias", "detach", "slice", "select", "split", "split_with_sizes", "chunk",
                   "unbind", "reshape", "narrow", "diagonal", "lift_fresh", "promote_types"})
#: aten operators that allocate without a kernel (the caching allocator's host work only)
ALLOCATIONS = frozenset({"empty", "empty_strided", "new_empty", "new_empty_strided", "empty_like"})
#: aten operators the CPU runs for AdamW's per-parameter step counts (on a GPU with capturable=False, host scalars)
HOST_ONLY = frozenset({"_local_scalar_dense"})


def _counted(step) -> dict:
    """Runs ``step()`` twice with every Triton launch recorded, not run (outputs keep what they held): a warm-up
    (optimizer state, lazily made buffers, imports), then the counted call. Returns {"ops": Counter of the aten
    operators that launch a kernel on a GPU (neither views nor bare allocations), "views": count,
    "allocations": count, "triton": Counter of Triton kernel launches} of the second call."""
    import triton
    from triton.runtime.interpreter import InterpretedFunction

    counts = {"ops": collections.Counter(), "views": 0, "allocations": 0, "triton": collections.Counter()}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in VIEWS:
                counts["views"] += 1
            elif name in ALLOCATIONS:
                counts["allocations"] += 1
            elif name not in HOST_ONLY:
                counts["ops"][name] += 1
            return func(*args, **(kwargs or {}))

    # the kernels are the interpreter's, or compiled ones when something imported them before TRITON_INTERPRET=1
    classes = (InterpretedFunction, triton.runtime.jit.JITFunction)
    real_runs = [cls.run for cls in classes]
    recording = [False]

    def record(self, *args, **kwargs):
        if recording[0]:
            counts["triton"][self.fn.__name__] += 1

    for cls in classes:
        cls.run = record
    try:
        step()
        recording[0] = True
        with Count():
            step()
    finally:
        for cls, run in zip(classes, real_runs):
            cls.run = run
    return counts


def count_step(n_layer: int, fused_inner: str = "off", batch: int = 2, seqlen: int = 64) -> dict:
    """:func:`_counted` of one training step (forward, loss, backward, AdamW) of a (d_model 32, ``n_layer``)
    MambaLM on the Triton backend."""
    from mamba_bio_audio import MambaConfig, MambaLM
    from mamba_bio_audio.modules.mixer import set_backend

    torch.manual_seed(0)
    model = set_backend(MambaLM(MambaConfig(d_model=32, n_layer=n_layer, vocab_size=16, fused_inner=fused_inner)),
                        "triton")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    ids = torch.randint(0, 16, (batch, seqlen + 1))
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def step():
        logits = model(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _counted(step)


def count_decode_step(n_layer: int, batch: int = 1) -> dict:
    """:func:`_counted` of one decode step (``MambaBackbone.step``, no autograd, the mixers reading their
    decode-parameter buffers as ``generation.Decoder`` has them) of the same tiny model on the Triton backend:
    what a CUDA graph of the step replays (the launches) and what an eager step dispatches. The MBA_* decode
    variables of ``ops`` choose the path, as in generation."""
    from mamba_bio_audio import MambaConfig, MambaLM
    from mamba_bio_audio.generation.decoder import refresh_decode_params, use_decode_params
    from mamba_bio_audio.modules.mixer import set_backend

    torch.manual_seed(0)
    model = set_backend(MambaLM(MambaConfig(d_model=32, n_layer=n_layer, vocab_size=16)), "triton").eval()
    states = model.backbone.allocate_states(batch)
    ids = torch.randint(0, 16, (batch,))
    refresh_decode_params(model)

    def step():
        with torch.no_grad(), use_decode_params(model):
            model.backbone.step(ids, states)

    return _counted(step)


def per_layer(fused_inner: str = "off", batch: int = 2, seqlen: int = 64, decode: bool = False) -> dict:
    """Counts of one layer: a 2-layer step's minus a 1-layer step's (see :func:`count_step`; with ``decode``,
    :func:`count_decode_step` at ``batch``)."""
    if decode:
        one, two = (count_decode_step(n, batch) for n in (1, 2))
    else:
        one, two = (count_step(n, fused_inner, batch, seqlen) for n in (1, 2))
    return {"ops": two["ops"] - one["ops"], "views": two["views"] - one["views"],
            "allocations": two["allocations"] - one["allocations"], "triton": two["triton"] - one["triton"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fused-inner", default="off", choices=("off", "keep", "triton"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=64)
    ap.add_argument("--decode", action="store_true", help="one decode step (batch --batch) instead of training")
    args = ap.parse_args()
    layer = per_layer(args.fused_inner, args.batch, args.seqlen, args.decode)
    what = f"decode, batch {args.batch}" if args.decode else f"training, fused_inner={args.fused_inner}"
    print(f"per layer ({what}): {sum(layer['ops'].values())} torch operators that launch "
          f"on a GPU, {sum(layer['triton'].values())} Triton launches, {layer['allocations']} allocations, "
          f"{layer['views']} views")
    print("  operators: " + ", ".join(f"{k} {v}" for k, v in layer["ops"].most_common()))
    print("  Triton: " + ", ".join(f"{k} {v}" for k, v in layer["triton"].most_common()))


if __name__ == "__main__":
    main()
