"""Parsing and checking the ``mba bench`` option values; each bad value is a one-line :class:`UserError` that
names the option, raised before any measurement."""

from __future__ import annotations

from mamba_bio_audio.errors import UserError

# triton-kernel-softplus: the Triton scan with softplus inside its kernels (no fp32 dt buffer); triton-lean: that
# and every 4th chunk-start state kept (benchmarks/scan.py, TRITON_VARIANTS)
SCAN_BACKENDS = ("triton", "cuda", "reference", "triton-kernel-softplus", "triton-lean")
CHECK_DTYPES = ("float64", "float32", "bfloat16")


def parse_shapes(text: str, what: str = "--shapes",
                 fields: tuple[str, ...] = ("batch", "dim", "seqlen")) -> list[tuple[int, ...]]:
    """``'8,1536,2048;1,512,65536'`` -> ``[(8, 1536, 2048), (1, 512, 65536)]``: ``;``-separated groups of
    ``len(fields)`` positive integers."""
    shapes = []
    for part in text.split(";"):
        try:
            values = tuple(int(v) for v in part.split(","))
        except ValueError:
            values = ()
        if len(values) != len(fields):
            raise UserError(f"{what}: expected '{','.join(fields)};...', got {part!r}")
        if min(values) < 1:
            raise UserError(f"{what}: sizes must be positive, got {part!r}")
        shapes.append(values)
    return shapes


def parse_pairs(text: str, what: str = "--shapes") -> list[tuple[int, int]]:
    """``'batch,seqlen;batch,seqlen'`` -> ``[(batch, seqlen), ...]`` (positive integers)."""
    return parse_shapes(text, what, ("batch", "seqlen"))


def parse_backends(text: str) -> list[str]:
    """``--backends`` of ``bench scan``: a comma-separated subset of :data:`SCAN_BACKENDS`, in the given order."""
    names = [b.strip() for b in text.split(",") if b.strip()]
    for name in names:
        if name not in SCAN_BACKENDS:
            raise UserError(f"--backends: unknown backend {name!r}")
    return names


def parse_models(text: str) -> list[str]:
    """``--models``: a comma-separated, de-duplicated subset of the benchmark models (``benchmarks.train.MODELS``)."""
    from mamba_bio_audio.benchmarks.train import MODELS

    names = [m.strip() for m in text.split(",") if m.strip()]
    for name in names:
        if name not in MODELS:
            raise UserError(f"--models: unknown model {name!r}; choose from {', '.join(MODELS)}")
    if not names:
        raise UserError("--models: empty list")
    return list(dict.fromkeys(names))


#: the models whose training step ``bench train --cuda-graphs`` captures: ours and mamba_ssm, so that a graphed
#: row of ours has a graphed peer (the Transformer runs as torch ships it)
GRAPHED_MODELS = ("mamba", "mamba_ssm")
#: ``--fused-inner`` values (``MambaConfig.fused_inner``)
FUSED_INNER = ("off", "keep", "triton", "lean", "all")


def cuda_graph_models(cuda_graphs: bool, models: list[str], device: str) -> tuple[str, ...]:
    """``--cuda-graphs`` of ``bench train``: the models among ``models`` whose step is captured
    (:data:`GRAPHED_MODELS`), none without the flag; a UserError off CUDA or when ``models`` has none of them."""
    if not cuda_graphs:
        return ()
    if not str(device).startswith("cuda"):
        raise UserError(f"--cuda-graphs: CUDA graphs need a CUDA device; got {device}")
    graphed = tuple(m for m in models if m in GRAPHED_MODELS)
    if not graphed:
        raise UserError(f"--cuda-graphs captures the step of {', '.join(GRAPHED_MODELS)} only; --models has none")
    return graphed


def parse_fused_inner(text: str) -> list[str]:
    """``--fused-inner`` of ``bench train``: one of :data:`FUSED_INNER` or a comma-separated list of them
    (``off,triton``: a row of ours for each, beside the same peer), de-duplicated in the given order."""
    names = [v.strip() for v in str(text).split(",") if v.strip()]
    for name in names:
        if name not in FUSED_INNER:
            raise UserError(f"--fused-inner: unknown value {name!r}; choose from {', '.join(FUSED_INNER)} "
                            "(comma-separated for several)")
    if not names:
        raise UserError("--fused-inner: empty list")
    return list(dict.fromkeys(names))


def parse_levels(text: str) -> list[int]:
    """``--checkpoint-level`` of ``bench memory``: comma-separated ``MambaConfig.checkpoint_level`` values."""
    from mamba_bio_audio.benchmarks.memory import LEVEL_NAMES
    from mamba_bio_audio.recipes.options import parse_int_list

    levels = parse_int_list(text, "--checkpoint-level")
    for level in levels:
        if level not in LEVEL_NAMES:
            raise UserError(f"--checkpoint-level: expected values among {sorted(LEVEL_NAMES)}, got {level}")
    return levels


def parse_batch_sizes(text: str) -> list[int]:
    """``--batch-sizes`` of ``bench generate``: comma-separated positive integers."""
    from mamba_bio_audio.recipes.options import parse_int_list

    batches = parse_int_list(text, "--batch-sizes")
    if min(batches) < 1:
        raise UserError(f"--batch-sizes: sizes must be positive, got {text!r}")
    return batches


def bench_size(d_model: int, n_layer: int, transformer_layers: int, n_head: int, vocab_size: int):
    """The models' :class:`~mamba_bio_audio.benchmarks.train.BenchSize`; ``n_head`` must divide ``d_model``."""
    from mamba_bio_audio.benchmarks.train import BenchSize

    if d_model % n_head:
        raise UserError(f"--n-head {n_head} must divide --d-model {d_model}")
    return BenchSize(d_model=d_model, n_layer=n_layer, vocab_size=vocab_size,
                     transformer_layers=transformer_layers, n_head=n_head)


def check_dtypes(text: str | None) -> str | None:
    """``--check-dtypes`` of ``bench context-parallel``: comma-separated names among :data:`CHECK_DTYPES`."""
    if text is not None:
        unknown = [d for d in text.split(",") if d.strip() not in CHECK_DTYPES]
        if unknown:
            raise UserError(f"--check-dtypes: unknown dtype {unknown[0]!r}; choose from {', '.join(CHECK_DTYPES)}")
    return text
