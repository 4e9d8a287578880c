"""Whole-model training throughput (``mba bench train``): our MambaLM, mamba_ssm's ``MambaLMHeadModel`` and a
same-size Transformer, one optimizer step at a time.

A step is forward (bf16 autocast on the GPU, fp32 parameters), cross-entropy in fp32, backward and AdamW (fused on
CUDA, as the recipes train: ``training.optim.adamw``; the row's ``optimizer``; rows before 2026-12-07 used the
foreach AdamW), between
two ``torch.cuda.synchronize()``; after warm-up steps (Triton compilation, autotuning, cuBLAS heuristics) the median
of the timed steps gives tokens/s = batch * seqlen / seconds. Then the same number of steps runs back to back with
one synchronisation at the end (``back_to_back_tokens_per_second``: the host may run ahead of the GPU, as in
training, so a host-bound model is not charged a sync per step). Peak memory is ``torch.cuda.max_memory_allocated``
over the timed steps (parameters, gradients, AdamW state and activations), its counter reset after the warm-up: the
one-time memory of the warm-up (Triton autotuning buffers, the eager steps before a capture) is ``setup_peak_gib``.
A replayed CUDA graph allocates nothing (its activations live in the graph's private memory pool), so a graphed
row's peak is ``torch.cuda.max_memory_reserved`` over the timed replays after ``empty_cache`` (the pool and the
static tensors; it was ``max_memory_allocated`` before 2026-12-07 17:30 UTC, which left the pool out: 1.5 GiB).
Out-of-memory and other failures become a row with an ``error`` and the run goes on.

With ``cuda_graph`` (``--cuda-graphs``) a model's step is captured once as a CUDA graph
(:class:`~mamba_bio_audio.training.graphed_step.CapturedStep`: AdamW with ``capturable=True``, autocast without its
weight cache) and each timed step is one replay plus the batch copy; the capture and its eager warm-up steps are
timed apart (the row's ``setup_seconds``). Our Mamba and mamba_ssm can both be captured, so a graphed row of ours
has a graphed peer. Every row says ``cuda_graph`` true or false.

With ``rounds`` > 1 every (model, shape) is measured that many times, the models' order reversed every other round
(so neither always runs first on a warm or a cold GPU); a row is the round with the median tokens/s, with every
round's tokens/s and their spread ((max - min) / median).

mamba_ssm's rows say whether it ran its fast path (``peer_fast_path``: ``mamba_inner_fn`` needs causal_conv1d's
kernel and ``use_fast_path`` on every layer; otherwise a slow torch path, and the row's note says so). Its fast path
recomputes the conv output and delta in the backward (``checkpoint_lvl=1``), as our ``fused_inner`` does; several
``fused_inner`` values (``--fused-inner off,triton``) give one row of ours each, beside the same peer.

The benchmark models (also used by :mod:`mamba_bio_audio.benchmarks.generate`):
- ``mamba``: our :class:`MambaLM` (d_model 768, 24 layers, vocab 256: 90,716,928 parameters), ops backend chosen
  by ``--backend`` (Triton on CUDA by default).
- ``mamba_ssm``: ``MambaLMHeadModel`` with mamba_ssm's defaults as in the anchors of TARGETS.md (Mamba1 layers,
  RMSNorm, fused add-norm, residual in fp32, vocab padded to a multiple of 8 (256 stays 256), tied embeddings);
  the same parameter count. Skipped with a note when mamba_ssm does not import.
- ``transformer``: :class:`TransformerLM` (d_model 768, 12 layers, 12 heads: 85,252,608 parameters).
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MODELS = ("mamba", "mamba_ssm", "transformer")
DEFAULT_SHAPES = [(8, 2048), (1, 16384), (1, 65536)]
LABELS = {"mamba": "Mamba (ours)", "mamba_ssm": "mamba_ssm", "transformer": "Transformer (SDPA)"}


@dataclass
class BenchSize:
    """Model sizes of the benchmarks (defaults: the 90.7M Mamba and the 85.3M Transformer)."""

    d_model: int = 768
    n_layer: int = 24  # Mamba blocks
    vocab_size: int = 256
    transformer_layers: int = 12
    n_head: int = 12


class Unavailable(Exception):
    """The model cannot be built here (e.g. mamba_ssm is not installed); the message becomes the row's note."""


def default_backend(backend: str | None, device: str) -> str:
    """Our ops backend: the one asked for, else Triton on CUDA and "auto" (the torch reference) elsewhere."""
    return backend or ("triton" if str(device).startswith("cuda") else "auto")


def build_model(name: str, size: BenchSize, device: str, dtype: torch.dtype = torch.float32,
                backend: str = "auto", fused_inner: str = "keep") -> torch.nn.Module:
    """One benchmark model on ``device`` in ``dtype``, seeded; raises :class:`Unavailable` for a missing package.
    ``fused_inner``: our Mamba's ``MambaConfig.fused_inner`` (the other models ignore it)."""
    torch.manual_seed(0)
    if name == "mamba":
        from mamba_bio_audio import MambaConfig, MambaLM
        from mamba_bio_audio.modules.mixer import set_backend

        with torch.device(device):  # built in place: no host copy (and a "meta" model keeps its tied weights)
            model = MambaLM(MambaConfig(d_model=size.d_model, n_layer=size.n_layer, vocab_size=size.vocab_size,
                                        fused_inner=fused_inner))
        model = set_backend(model, backend).to(dtype=dtype)
        for name, p in model.named_parameters():  # as mamba_ssm keeps them: A_log and D in fp32 at any dtype
            if name.endswith(("A_log", "D")):
                p.data = p.data.float()
        return model
    if name == "mamba_ssm":
        try:
            from mamba_ssm.models.config_mamba import MambaConfig as SsmConfig
            from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
        except Exception as e:  # noqa: BLE001 - missing, or built for another torch
            raise Unavailable(f"not installed ({_first_line(e)})") from None
        config = SsmConfig(d_model=size.d_model, n_layer=size.n_layer, vocab_size=size.vocab_size,
                           ssm_cfg={"layer": "Mamba1"}, rms_norm=True, residual_in_fp32=True, fused_add_norm=True,
                           pad_vocab_size_multiple=8, tie_embeddings=True)
        return MambaLMHeadModel(config, device=device, dtype=dtype)
    if name == "transformer":
        from mamba_bio_audio.models.transformer import TransformerConfig, TransformerLM

        config = TransformerConfig(d_model=size.d_model, n_layer=size.transformer_layers, n_head=size.n_head,
                                   vocab_size=size.vocab_size)
        with torch.device(device):
            return TransformerLM(config).to(dtype=dtype)
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def peer_fast_path(model: torch.nn.Module) -> dict:
    """Whether mamba_ssm's ``model`` runs its fast path: {"peer_fast_path": bool, "peer_fast_path_note": why not}
    (no note when it does). ``mamba_simple.Mamba.forward`` takes ``mamba_inner_fn`` only when causal_conv1d's
    ``causal_conv1d_fn`` imported and the layer's ``use_fast_path`` is on; its decode step needs
    ``causal_conv1d_update`` and ``selective_state_update`` for the same."""
    try:
        import mamba_ssm.modules.mamba_simple as simple
    except Exception as e:  # noqa: BLE001 - missing, or built for another torch
        return {"peer_fast_path": False, "peer_fast_path_note": f"mamba_ssm.modules.mamba_simple: {_first_line(e)}"}
    layers = [m for m in model.modules() if isinstance(m, simple.Mamba)]
    missing = [name for name in ("causal_conv1d_fn", "causal_conv1d_update", "selective_state_update")
               if getattr(simple, name, None) is None]
    slow = sum(not getattr(m, "use_fast_path", False) for m in layers)
    notes = [f"{', '.join(missing)} did not import"] if missing else []
    if slow:
        notes.append(f"use_fast_path off in {slow} of {len(layers)} layers")
    if not layers:
        notes.append("no mamba_simple.Mamba layer found")
    return {"peer_fast_path": not notes, **({"peer_fast_path_note": "; ".join(notes)} if notes else {})}


def logits_of(name: str, model, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids (batch, seqlen) -> logits (batch, seqlen, vocab) for any benchmark model."""
    out = model(input_ids)
    return out.logits if name == "mamba_ssm" else out


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def free_memory(device: str) -> None:
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def error_text(e: BaseException) -> str:
    """A row's ``error``: "out of memory", or the exception's first line."""
    return "out of memory" if isinstance(e, torch.cuda.OutOfMemoryError) else _first_line(e)


def measure_train(name: str, size: BenchSize, batch: int, seqlen: int, device: str, *, warmup: int = 3,
                  steps: int = 10, backend: str = "auto", cuda_graph: bool = False, fused_inner: str = "keep",
                  progress: Callable[[str], None] = print) -> dict:
    """Median seconds per AdamW step of model ``name`` at (batch, seqlen), tokens/s and peak GiB (a row dict);
    also ``steps`` steps back to back with one synchronisation (``back_to_back_seconds_per_step``,
    ``back_to_back_tokens_per_second``). ``peak_gib``: the peak over the timed steps (the counter reset after the
    warm-up); ``setup_peak_gib``: the peak of building, warming up (and capturing).
    ``cuda_graph``: the step captured as a CUDA graph (CUDA only; at least one eager warm-up step before capture
    even with ``warmup`` 0), its setup time in the row's ``setup_seconds``. ``fused_inner``: our Mamba's
    ``MambaConfig.fused_inner``; its row records it with the fused scan's ``fused_save_every`` (None: the scan's
    own choice; environment variable MBA_FUSED_SAVE_EVERY) and ``scan_softplus`` (MBA_SCAN_SOFTPLUS), on the Triton
    backend ``scan_bwd_maxnreg`` (MBA_SCAN_BWD_MAXNREG; None: no cap; "auto": the default, capped where it saves a
    wave). mamba_ssm's
    row records :func:`peer_fast_path` (a note when it is off)."""
    from mamba_bio_audio import ops
    from mamba_bio_audio.training.graphed_step import make_step
    from mamba_bio_audio.training.optim import adamw

    cuda = str(device).startswith("cuda")
    row = {"model": name, "batch": batch, "seqlen": seqlen, "autocast": "bf16" if cuda else "off",
           "cuda_graph": cuda_graph}
    if name == "mamba":
        row.update(backend=backend, fused_inner=fused_inner,
                   scan_softplus="kernel" if ops.scan_softplus_in_kernel() else "pass")
        if backend == "triton":
            from mamba_bio_audio.kernels.selective_scan.function import bwd_maxnreg_default

            cap = bwd_maxnreg_default()
            row["scan_bwd_maxnreg"] = "auto" if cap == -1 else cap  # -1: plan.AUTO_BWD_MAXNREG
        if fused_inner != "off":
            row["fused_save_every"] = ops.fused_inner_save_every() or (
                ops.LEAN_SAVE_EVERY if fused_inner == "lean" else None)
    model = opt = loss_fn = step = None
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        model = build_model(name, size, device, backend=backend, fused_inner=fused_inner)
        row["parameters"] = count_parameters(model)
        if name == "mamba_ssm":
            row.update(peer_fast_path(model))
            if not row["peer_fast_path"]:
                row["note"] = f"mamba_ssm off its fast path: {row['peer_fast_path_note']}"
        model.train()
        opt = adamw(model.parameters(), lr=1e-4, capturable=cuda_graph)
        row["optimizer"] = "AdamW (fused)" if opt.defaults.get("fused") else "AdamW"
        gen = torch.Generator(device=device).manual_seed(1)
        ids = torch.randint(0, size.vocab_size, (batch, seqlen + 1), device=device, generator=gen)
        inputs, targets = ids[:, :-1], ids[:, 1:]
        loss_fn = lm_loss(name, model, size.vocab_size, cuda, autocast_cache=not cuda_graph)
        step = make_step(model, opt, loss_fn, inputs, targets, cuda_graph, warmup=max(1, warmup))
        if cuda_graph:
            row["setup_seconds"] = step.setup_seconds
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        for _ in range(warmup):
            step(inputs, targets)
        sync()
        if cuda:  # the timed steps' peak, without the warm-up's one-time memory
            row["setup_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            if cuda_graph:  # keep only what is held: the graph's private pool and the static tensors
                torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            sync()
            t0 = time.perf_counter()
            step(inputs, targets)
            sync()
            times.append(time.perf_counter() - t0)
        seconds = sorted(times)[len(times) // 2]
        row.update(seconds_per_step=seconds, ms_per_step=1000 * seconds, tokens_per_second=batch * seqlen / seconds)
        t0 = time.perf_counter()
        for _ in range(steps):  # back to back: one synchronisation at the end
            step(inputs, targets)
        sync()
        together = (time.perf_counter() - t0) / steps
        row.update(back_to_back_seconds_per_step=together, back_to_back_tokens_per_second=batch * seqlen / together)
        if cuda:  # a replay allocates nothing: its activations live in the graph's pool, counted as reserved
            peak = torch.cuda.max_memory_reserved() if cuda_graph else torch.cuda.max_memory_allocated()
            row["peak_gib"] = peak / 2**30
            if cuda_graph:  # mba bench summary tells these from older graphed rows (replays' allocated peak)
                row["peak_measure"] = "reserved"
    except Unavailable as e:
        row["note"] = str(e)
    except Exception as e:  # noqa: BLE001 - OOM or a failing model becomes a row; the benchmark goes on
        row["error"] = error_text(e)
        if not isinstance(e, torch.cuda.OutOfMemoryError):
            progress(traceback.format_exc().rstrip())
    finally:
        del model, opt, loss_fn, step  # the loss function holds the model too
        free_memory(device)
    return row


def lm_loss(name: str, model, vocab_size: int, cuda: bool, autocast_cache: bool = True):
    """The benchmark's loss function (inputs, targets) -> loss: the forward under bf16 autocast on CUDA (fp32
    parameters; ``autocast_cache=False`` for a captured step), cross-entropy in fp32 over the first
    ``vocab_size`` logits. inputs, targets: (batch, seqlen) token ids."""
    def loss_fn(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda,
                            cache_enabled=autocast_cache):
            logits = logits_of(name, model, inputs)
        return F.cross_entropy(logits[..., :vocab_size].float().flatten(0, 1), targets.flatten())

    return loss_fn


def run_train_bench(models: list[str], shapes: list[tuple[int, int]], size: BenchSize, device: str, *,
                    warmup: int = 3, steps: int = 10, backend: str = "auto", cuda_graph_models: tuple[str, ...] = (),
                    fused_inner: str | list[str] = "keep", rounds: int = 1,
                    progress: Callable[[str], None] = print) -> list[dict]:
    """One row per (model, shape), in the order of ``models`` then ``shapes``; our Mamba gives one row per value
    of ``fused_inner`` (a name or a list); a missing model gives one "note" row per shape. Models in
    ``cuda_graph_models`` run their step as a captured CUDA graph (:func:`measure_train`). Each shape is measured
    in ``rounds`` rounds, the order of the runs reversed every other round; a row is the round with the median
    tokens/s, with ``rounds_tokens_per_second`` and ``spread`` when ``rounds`` > 1."""
    fused = [fused_inner] if isinstance(fused_inner, str) else list(fused_inner)
    runs = [(name, f if name == "mamba" else "off") for name in models for f in (fused if name == "mamba" else
                                                                                 ["off"])]
    measured: dict[tuple, list[dict]] = {}
    for batch, seqlen in shapes:
        for r in range(rounds):
            for name, fi in (runs if r % 2 == 0 else runs[::-1]):
                done = measured.get((name, fi, batch, seqlen), [])
                if done and "note" in done[0] and "tokens_per_second" not in done[0] and "error" not in done[0]:
                    continue  # not installed: no other round will differ
                graphed = name in cuda_graph_models
                progress(f"train bench: {name}" + (f" (fused_inner {fi})" if len(fused) > 1 and name == "mamba"
                                                   else "") + f", batch {batch}, seqlen {seqlen}"
                         + (", CUDA graph" if graphed else "") + (f", round {r + 1}/{rounds}" if rounds > 1 else ""))
                row = measure_train(name, size, batch, seqlen, device, warmup=warmup, steps=steps, backend=backend,
                                    cuda_graph=graphed, fused_inner=fi, progress=progress)
                progress("  " + _summary(row))
                measured.setdefault((name, fi, batch, seqlen), []).append(row)
    return [_merge_rounds(measured[(name, fi, b, L)]) for name, fi in runs for b, L in shapes
            if (name, fi, b, L) in measured]


def _merge_rounds(rounds: list[dict]) -> dict:
    """The row of the round with the median tokens/s (a failed round if none succeeded), with every round's
    tokens/s and their spread when there were several."""
    done = sorted((r for r in rounds if "tokens_per_second" in r), key=lambda r: r["tokens_per_second"])
    if len(rounds) == 1 or not done:
        return rounds[0]
    median = done[len(done) // 2]
    speeds = [r.get("tokens_per_second") for r in rounds]
    ok = [v for v in speeds if v is not None]
    return {**median, "rounds_tokens_per_second": speeds,
            "spread": (max(ok) - min(ok)) / median["tokens_per_second"],
            **({"round_errors": [r["error"] for r in rounds if "error" in r]} if len(ok) < len(rounds) else {})}


def _summary(row: dict) -> str:
    if "tokens_per_second" in row:
        peak = f", {row['peak_gib']:.2f} GiB" if "peak_gib" in row else ""
        setup = f", capture {row['setup_seconds']:.1f} s" if "setup_seconds" in row else ""
        together = (f" ({row['back_to_back_tokens_per_second']:,.0f} back to back)"
                    if "back_to_back_tokens_per_second" in row else "")
        note = f"; {row['note']}" if row.get("note") else ""
        return (f"{row['tokens_per_second']:,.0f} tokens/s{together}, {row['ms_per_step']:.1f} ms/step{peak}{setup}"
                f"{note}")
    return row.get("error") or row.get("note", "")


def train_markdown(rows: list[dict], env: dict, size: BenchSize, warmup: int, steps: int) -> str:
    from mamba_bio_audio.benchmarks.report import commit_text, markdown_table

    graphed = any(r.get("cuda_graph") for r in rows)
    rounds = max((len(r.get("rounds_tokens_per_second") or [1]) for r in rows), default=1)
    headers = ["model", "(batch, seqlen)", "parameters", "tokens/s", "tokens/s back to back", "ms/step",
               "peak GiB", "setup peak GiB", *(["CUDA graph", "capture s"] if graphed else []),
               *(["spread"] if rounds > 1 else []), "note"]
    table = markdown_table(headers, [
        [model_label(r), f"({r['batch']}, {r['seqlen']})",
         f"{r['parameters']:,}" if "parameters" in r else None, r.get("tokens_per_second"),
         r.get("back_to_back_tokens_per_second"), r.get("ms_per_step"), r.get("peak_gib"), r.get("setup_peak_gib"),
         *([_yes_no(r.get("cuda_graph")), r.get("setup_seconds")] if graphed else []),
         *([f"{r['spread']:.1%}" if r.get("spread") is not None else None] if rounds > 1 else []),
         r.get("error") or r.get("note", "")] for r in rows])
    autocast = "bf16 autocast" if rows and rows[0]["autocast"] == "bf16" else "no autocast"
    graph_text = (" Rows with CUDA graph \"yes\" replay the whole step captured once as a CUDA graph (AdamW "
                  "capturable=True); their capture, with its eager warm-up steps, is timed apart (capture s); their peak is "
                  "torch.cuda.max_memory_reserved over the replays (a replay allocates nothing: the graph's memory "
                  "pool holds its activations); the other rows run eagerly." if graphed else "")
    round_text = (f" Each (model, shape) measured in {rounds} rounds, the order of the models reversed every "
                  "other round; a row is the median round, spread = (max - min) / median tokens/s."
                  if rounds > 1 else "")
    fused_text = (" mamba_ssm's fast path (mamba_inner_fn, checkpoint_lvl=1) recomputes the conv output and delta "
                  "in the backward; our rows do so with fused inner triton or all, and keep them with keep (the "
                  "default) or off."
                  if any(r["model"] == "mamba_ssm" for r in rows) else "")
    return (f"# Whole-model training throughput\n\n{env['device']}, torch {env['torch']}, triton {env['triton']}, "
            f"mamba_ssm {env['mamba_ssm']}, {env['date']}{commit_text(env)}. One step = forward ({autocast}, fp32 parameters) + "
            f"fp32 cross-entropy + backward + {rows[0].get('optimizer', 'AdamW') if rows else 'AdamW'}; median of {steps} steps after {warmup} warm-up steps, each "
            f"step between two synchronisations; \"back to back\": the same number of steps with one "
            f"synchronisation at the end; peak = torch.cuda.max_memory_allocated over the timed steps (reset after "
            f"the warm-up; setup peak: building, warm-up and capture). Mamba: d_model {size.d_model}, "
            f"{size.n_layer} layers; Transformer: {size.transformer_layers} layers, {size.n_head} heads, SDPA causal, "
            f"no position embedding; vocab {size.vocab_size}.{graph_text}{round_text}{fused_text}\n\n{table}")


def model_label(row: dict) -> str:
    """A row's model column: the model's name, with our Mamba's backend and fused-inner settings in brackets."""
    if "backend" not in row:
        return LABELS[row["model"]]
    settings = [row["backend"]]
    if row.get("fused_inner", "off") != "off":
        every = row.get("fused_save_every")
        settings.append(f"fused inner {row['fused_inner']}" + (f", save_every {every}" if every else ""))
    if row.get("scan_softplus") == "kernel":
        settings.append("softplus in the scan")
    if row.get("scan_bwd_maxnreg") not in (None, 0, "auto"):  # auto: the default, labelled by nothing
        settings.append(f"scan backward maxnreg {row['scan_bwd_maxnreg']}")
    return f"{LABELS[row['model']]} [{', '.join(settings)}]"


def _yes_no(flag: bool | None) -> str:
    return "yes" if flag else "no"


def bar_chart(path, panels: list[tuple[list[str], dict[str, list[float | None]], str, bool]], title: str):
    """Grouped bars saved as PNG: each panel is (x labels, {series: values (None = missing)}, y label, log y)."""
    from mamba_bio_audio.files import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 3.8), dpi=120, squeeze=False)
    for ax, (groups, data, label, log) in zip(axes[0], panels):
        width = 0.8 / max(1, len(data))
        for k, (name, values) in enumerate(data.items()):
            xs = [i + (k - (len(data) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(xs, [float("nan") if v is None else v for v in values], width, label=name)
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def train_figure(path, rows: list[dict]):
    """tokens/s and peak GiB per shape, one bar per model and setting (its label says "CUDA graph" when its steps
    were)."""
    shapes = list(dict.fromkeys((r["batch"], r["seqlen"]) for r in rows))

    def name(r: dict) -> str:
        return model_label(r) + (", CUDA graph" if r.get("cuda_graph") else "")

    models = list(dict.fromkeys(name(r) for r in rows))

    def series(key):
        return {m: [next((r.get(key) for r in rows if name(r) == m and (r["batch"], r["seqlen"]) == s), None)
                    for s in shapes] for m in models}

    groups = [f"({b}, {L})" for b, L in shapes]
    panels = [(groups, series("tokens_per_second"), "tokens/s", False)]
    peaks = series("peak_gib")
    if any(v is not None for values in peaks.values() for v in values):  # CUDA only
        panels.append((groups, peaks, "peak GiB", False))
    return bar_chart(path, panels, "training step throughput")

