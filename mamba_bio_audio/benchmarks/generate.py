"""Generation throughput (``mba bench generate``): our MambaLM (CUDA-graph decode), mamba_ssm's ``generate``
(``cg=True``) and the Transformer with a KV cache, eager and under CUDA graphs, greedy, after a short random prompt.

A timed run is one whole generate call: prefill of the prompt plus ``new_tokens`` decode steps with sampling,
between two ``torch.cuda.synchronize()`` — what mamba_ssm's own generation benchmark times. Setup that a user
pays once per model and batch size (the graph captures of our
:class:`~mamba_bio_audio.generation.decoder.Decoder` and of the Transformer's
:class:`~mamba_bio_audio.generation.transformer_decoder.TransformerDecoder` when they are built, mamba_ssm's graph
cache inside its first ``generate`` call, Triton compilation and autotuning in anyone's first call) is the same for
every model: ``setup_seconds`` = building the generate function + the first (warm-up) call - what that call would
take warm (the median timed call, scaled to the warm-up's tokens). The first call is untimed otherwise
(``first_call_seconds``); the median of ``repeats`` timed calls follows.
ms/step = seconds / new_tokens; tokens/s = batch * new_tokens / seconds. ``peak_gib`` is the peak over the timed
calls (its counter reset after the warm-up call), ``setup_peak_gib`` the peak of building and the warm-up (e.g.
autotuning buffers). mamba_ssm's rows record whether its fast path is on (``peer_fast_path``).

On CUDA the Transformer gets two rows per batch size (``cuda_graph`` false / true): eager ``generate``, whose
attention reads a cache that grows by one position per step, and the TransformerDecoder, whose static-cache step is
replayed as CUDA graphs attending to the filled positions rounded up to a multiple of ``attention_bucket`` (more
cache reads than the eager step, no host overhead); off CUDA only the eager row.

Largest batch (the Mamba paper's "5x the Transformer's inference throughput"): for 2,048 new tokens, a doubling
search (then bisection to 1/8) over batch sizes finds the largest batch whose memory fits — a probe allocates the
full-length state (Mamba) or KV cache (Transformer; graphed: also its captured graphs), prefills and takes steps at
the last positions, and catches ``torch.cuda.OutOfMemoryError`` — then one full generation at that batch gives each
model's throughput. The Transformer is searched and timed once eager and once under CUDA graphs (on CUDA);
``ratio`` / ``ratio_graphed`` compare Mamba with each.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

import torch

from mamba_bio_audio.benchmarks.train import (
    LABELS,
    BenchSize,
    Unavailable,
    bar_chart,
    build_model,
    count_parameters,
    error_text,
    free_memory,
)
from mamba_bio_audio.generation.transformer_decoder import DEFAULT_BUCKET

LARGEST_MODELS = ("mamba", "transformer")


def decode_modes(name: str, device: str, cuda_graph: bool | None) -> list[bool | None]:
    """The ``cuda_graph`` settings ``name`` is measured with: ours as asked; the Transformer eager (False) and,
    on CUDA, under CUDA graphs (True); mamba_ssm as its ``cg=True`` decides (None)."""
    if name == "mamba":
        return [cuda_graph]
    if name == "transformer":
        return [False, True] if str(device).startswith("cuda") else [False]
    return [None]


def make_generate_fn(name: str, model, prompt: torch.Tensor, new_tokens: int, cuda_graph: bool | None = None,
                     attention_bucket: int = DEFAULT_BUCKET) -> Callable[..., torch.Tensor]:
    """``fn(n=new_tokens)`` runs one greedy generation of n tokens after ``prompt`` (batch, prompt_len); for our
    model it holds a :class:`~mamba_bio_audio.generation.decoder.Decoder` built (its step captured) here, once, and
    for the Transformer with ``cuda_graph`` True a
    :class:`~mamba_bio_audio.generation.transformer_decoder.TransformerDecoder` for ``prompt_len + new_tokens``
    positions (otherwise its eager ``generate``)."""
    if name == "mamba":
        from mamba_bio_audio.generation.decoder import Decoder

        decoder = Decoder(model, prompt.shape[0], cuda_graph)
        return lambda n=new_tokens: decoder(prompt, n, temperature=0)
    if name == "mamba_ssm":
        cg = prompt.is_cuda
        return lambda n=new_tokens: model.generate(prompt, max_length=prompt.shape[1] + n, cg=cg, top_k=1)
    if cuda_graph:
        from mamba_bio_audio.generation.transformer_decoder import TransformerDecoder

        decoder = TransformerDecoder(model, prompt.shape[0], prompt.shape[1] + new_tokens, True, attention_bucket)
        return lambda n=new_tokens: decoder(prompt, n, temperature=0)
    return lambda n=new_tokens: model.generate(prompt, n, temperature=0)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_generation(name: str, model, batch: int, prompt_len: int, new_tokens: int, device: str, *,
                    repeats: int = 3, warmup_tokens: int | None = None, cuda_graph: bool | None = None,
                    attention_bucket: int = DEFAULT_BUCKET) -> dict:
    """Setup, warm-up and the median of ``repeats`` timed generate calls: a partial row (raises on OOM) with
    ``setup_seconds`` (module docstring), ``build_seconds``, ``first_call_seconds``, ``warmup_tokens``, and on
    CUDA ``setup_peak_gib`` and ``peak_gib`` (the peak of the timed calls)."""
    cuda = str(device).startswith("cuda")
    vocab = model.config.vocab_size
    gen = torch.Generator(device=device).manual_seed(2)
    prompt = torch.randint(0, vocab, (batch, prompt_len), device=device, generator=gen)
    t0 = time.perf_counter()
    fn = make_generate_fn(name, model, prompt, new_tokens, cuda_graph, attention_bucket)
    _sync(device)
    build = time.perf_counter() - t0
    # the warm-up (kernels compiled, caches allocated, mamba_ssm's graphs captured); shorter if asked, except for
    # mamba_ssm, whose graph cache is rebuilt when a call is longer than the one it was captured for
    first_tokens = new_tokens if warmup_tokens is None or name == "mamba_ssm" else warmup_tokens
    t0 = time.perf_counter()
    fn(first_tokens)
    _sync(device)
    first = time.perf_counter() - t0
    row = {"build_seconds": build, "first_call_seconds": first, "warmup_tokens": first_tokens}
    if cuda:  # the timed calls' peak, without the warm-up's one-time memory
        row["setup_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if tuple(out.shape) != (batch, prompt_len + new_tokens):
            raise RuntimeError(f"{name} generated shape {tuple(out.shape)}, expected {(batch, prompt_len + new_tokens)}")
        del out
    seconds = sorted(times)[len(times) // 2]
    row.update(setup_seconds=setup_seconds(build, first, seconds * first_tokens / new_tokens), seconds=seconds,
               ms_per_step=1000 * seconds / new_tokens, tokens_per_second=batch * new_tokens / seconds)
    if cuda:
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def setup_seconds(build: float, first_call: float, warm_call: float) -> float:
    """What a user pays once: building the generate function plus the first call's excess over a warm call of
    the same length (never negative)."""
    return build + max(0.0, first_call - warm_call)


def _dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def _base_row(name: str, device: str, backend: str, cuda_graph: bool | None, prompt_len: int,
              new_tokens: int, attention_bucket: int = DEFAULT_BUCKET) -> dict:
    """What every row of ``name`` says about the run: sizes, dtype, backend (ours), whether a CUDA graph is used
    (and, for the graphed Transformer, its ``attention_bucket``)."""
    cuda = str(device).startswith("cuda")
    row = {"model": name, "prompt_len": prompt_len, "new_tokens": new_tokens, "dtype": str(_dtype(device))[6:]}
    if name == "mamba":
        row.update(backend=backend, cuda_graph=cuda and cuda_graph is not False)
    elif name == "transformer":  # eager, or its static-cache step under CUDA graphs when asked (on CUDA)
        row["cuda_graph"] = cuda and cuda_graph is True
        if row["cuda_graph"]:
            row["attention_bucket"] = attention_bucket
    else:  # mamba_ssm runs generate(cg=True) on CUDA
        row["cuda_graph"] = cuda
    return row


def _mode(row: dict) -> str:
    return ", CUDA graph" if row.get("cuda_graph") and row["model"] == "transformer" else ""


def run_generate_bench(models: list[str], batch_sizes: list[int], size: BenchSize, device: str, *,
                       prompt_len: int = 16, new_tokens: int = 1000, repeats: int = 3, backend: str = "auto",
                       cuda_graph: bool | None = None, attention_bucket: int = DEFAULT_BUCKET,
                       progress: Callable[[str], None] = print) -> list[dict]:
    """One row per (model, decode mode, batch size): ms/step, tokens/s, peak GiB (or a note / an error); the
    modes are :func:`decode_modes` (the Transformer eager, then graphed on CUDA)."""
    rows = []
    cuda = str(device).startswith("cuda")
    dtype = _dtype(device)
    for name in models:
        modes = decode_modes(name, device, cuda_graph)
        bases = [_base_row(name, device, backend, mode, prompt_len, new_tokens, attention_bucket) for mode in modes]
        model = None
        try:
            model = build_model(name, size, device, dtype, backend).eval()
            parameters = count_parameters(model)
            fast = _fast_path(name, model)
            for base in bases:
                base.update(parameters=parameters, **fast)
        except Unavailable as e:
            rows += [{**base, "batch": b, "note": str(e)} for base in bases for b in batch_sizes]
            progress(f"generate bench: {name}: {e}")
            continue
        for mode, base in zip(modes, bases):
            for batch in batch_sizes:
                progress(f"generate bench: {name}{_mode(base)}, batch {batch}, {new_tokens} new tokens")
                row = {**base, "batch": batch}
                try:
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    row.update(time_generation(name, model, batch, prompt_len, new_tokens, device, repeats=repeats,
                                               cuda_graph=mode, attention_bucket=attention_bucket))
                except Exception as e:  # noqa: BLE001 - OOM or a failing model becomes a row; the benchmark goes on
                    row["error"] = error_text(e)
                    if not isinstance(e, torch.cuda.OutOfMemoryError):
                        progress(traceback.format_exc().rstrip())
                free_memory(device)
                progress("  " + _summary(row))
                rows.append(row)
        del model
        free_memory(device)
    return rows


def _fast_path(name: str, model) -> dict:
    """mamba_ssm's :func:`~mamba_bio_audio.benchmarks.train.peer_fast_path` fields, with a note when it is off
    (nothing for the other models)."""
    if name != "mamba_ssm":
        return {}
    from mamba_bio_audio.benchmarks.train import peer_fast_path

    fast = peer_fast_path(model)
    if not fast["peer_fast_path"]:
        fast["note"] = f"mamba_ssm off its fast path: {fast['peer_fast_path_note']}"
    return fast


def _summary(row: dict) -> str:
    if "tokens_per_second" in row:
        return f"{row['tokens_per_second']:,.0f} tokens/s, {row['ms_per_step']:.3f} ms/step"
    return row.get("error") or row.get("note", "")


# ---- largest batch ------------------------------------------------------------------------------------------
def _probe(name: str, model, batch: int, prompt_len: int, new_tokens: int, device: str,
           cuda_graph: bool | None, attention_bucket: int = DEFAULT_BUCKET) -> None:
    """Allocate what a generation of ``new_tokens`` at ``batch`` holds, prefill, and take steps at the last
    positions (the largest attention for the Transformer). Raises torch.cuda.OutOfMemoryError when it does not fit.
    The graphed Transformer allocates its whole cache and captures every attended length (the longest included)
    when its decoder is built, so a short generation holds what a full one does."""
    prompt = torch.zeros(batch, prompt_len, dtype=torch.long, device=device)
    with torch.no_grad():
        if name == "mamba":
            make_generate_fn(name, model, prompt, 3, cuda_graph)()  # its state does not grow with length
        elif cuda_graph:
            make_generate_fn(name, model, prompt, new_tokens, True, attention_bucket)(3)
        else:
            cache = model.allocate_cache(batch, prompt_len + new_tokens)
            ids = model(prompt, cache=cache, num_last_tokens=1)[:, -1].argmax(-1)
            cache.pos = cache.max_len - 2
            for _ in range(2):
                ids = model.step(ids, cache).argmax(-1)
    _sync(device)


def out_of_memory(e: BaseException) -> bool:
    """An allocation failure: torch's OutOfMemoryError, or the error a CUDA-graph capture ends with when an
    allocation inside it failed."""
    text = str(e).lower()
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "captur" in text))


def fits(name: str, model, batch: int, prompt_len: int, new_tokens: int, device: str,
         cuda_graph: bool | None = None, attention_bucket: int = DEFAULT_BUCKET) -> bool:
    """Whether a generation of ``new_tokens`` at ``batch`` fits in memory (see :func:`_probe`)."""
    try:
        _probe(name, model, batch, prompt_len, new_tokens, device, cuda_graph, attention_bucket)
        return True
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not out_of_memory(e):
            raise
        return False
    finally:
        free_memory(device)


def largest_batch(fit: Callable[[int], bool], max_batch: int, progress: Callable[[str], None] = print) -> tuple[int, bool]:
    """(largest batch b <= max_batch with fit(b), capped) by doubling from 1, then bisecting to within b/8.
    ``capped``: max_batch itself fit (the true limit may be higher). (0, False) when batch 1 does not fit."""
    lo, hi, batch = 0, None, 1
    while batch <= max_batch:
        ok = fit(batch)
        progress(f"  batch {batch}: {'fits' if ok else 'out of memory'}")
        if not ok:
            hi = batch
            break
        lo, batch = batch, batch * 2
    if hi is None:
        if lo == max_batch:
            return lo, True
        ok = fit(max_batch)
        progress(f"  batch {max_batch}: {'fits' if ok else 'out of memory'}")
        if ok:
            return max_batch, True
        hi = max_batch
    while lo and hi - lo > max(1, lo // 8):
        mid = (lo + hi) // 2
        ok = fit(mid)
        progress(f"  batch {mid}: {'fits' if ok else 'out of memory'}")
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo, False


def _largest_for(name: str, size: BenchSize, device: str, prompt_len: int, new_tokens: int, max_batch: int,
                 backend: str, cuda_graph: bool | None, progress: Callable[[str], None],
                 attention_bucket: int = DEFAULT_BUCKET) -> dict:
    """One model's (in one decode mode) largest-batch row: the search, then one full timed generation there."""
    dtype = _dtype(device)
    cuda = str(device).startswith("cuda")
    row = _base_row(name, device, backend, cuda_graph, prompt_len, new_tokens, attention_bucket)
    model = build_model(name, size, device, dtype, backend).eval()
    row["parameters"] = count_parameters(model)
    progress(f"largest batch: {name}{_mode(row)}, {new_tokens} new tokens (search up to {max_batch})")
    batch, capped = largest_batch(
        lambda b: fits(name, model, b, prompt_len, new_tokens, device, cuda_graph, attention_bucket),
        max_batch, progress)
    row.update(largest_batch=batch, capped=capped, batch=batch)  # batch: the one timed (lowered on a retry)
    for _ in range(3):  # the full run may still run out where the probe did not: back off and retry
        if batch < 1:
            row["error"] = "batch 1 does not fit"
            return row
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            row.update(batch=batch, **time_generation(name, model, batch, prompt_len, new_tokens, device,
                                                      repeats=1, warmup_tokens=8, cuda_graph=cuda_graph,
                                                      attention_bucket=attention_bucket))
            return row
        except RuntimeError as e:
            if not out_of_memory(e):
                raise
            free_memory(device)
            batch = batch * 3 // 4
            progress(f"  the full run ran out of memory; retrying at batch {batch}")
    row["error"] = "out of memory"
    return row


def run_largest_batch(models: list[str], size: BenchSize, device: str, *, prompt_len: int = 16,
                      new_tokens: int = 2048, max_batch: int = 1 << 20, backend: str = "auto",
                      cuda_graph: bool | None = None, attention_bucket: int = DEFAULT_BUCKET,
                      progress: Callable[[str], None] = print) -> dict:
    """For each of ``models`` (ours, the Transformer) in each of its :func:`decode_modes`: the largest batch that
    fits ``new_tokens`` and the throughput of one full generation there. ``ratio`` = Mamba tokens/s / eager
    Transformer tokens/s; ``ratio_graphed`` = Mamba / Transformer under CUDA graphs (None off CUDA)."""
    rows = []
    for name in models:
        for mode in decode_modes(name, device, cuda_graph):
            try:
                row = _largest_for(name, size, device, prompt_len, new_tokens, max_batch, backend, mode, progress,
                                   attention_bucket)
            except Exception as e:  # noqa: BLE001 - a failing model becomes a row
                row = {**_base_row(name, device, backend, mode, prompt_len, new_tokens, attention_bucket),
                       "error": error_text(e)}
                progress(traceback.format_exc().rstrip())
            free_memory(device)
            progress("  " + _summary(row))
            rows.append(row)

    def speed(name: str, graphed: bool | None = None) -> float | None:
        return next((r.get("tokens_per_second") for r in rows
                     if r["model"] == name and (graphed is None or r.get("cuda_graph") == graphed)), None)

    def ratio(other: float | None) -> float | None:
        mamba = speed("mamba")
        return mamba / other if mamba and other else None

    return {"rows": rows, "ratio": ratio(speed("transformer", False)),
            "ratio_graphed": ratio(speed("transformer", True)), "max_batch": max_batch}


# ---- report -------------------------------------------------------------------------------------------------
def _label(r: dict) -> str:
    """The model's label with its backend (ours) and decode mode: "Mamba (ours) [triton, CUDA graph]"."""
    extra = [r["backend"]] if "backend" in r else []
    extra += ["CUDA graph"] if r.get("cuda_graph") else (["eager"] if "cuda_graph" in r else [])
    return LABELS[r["model"]] + (f" [{', '.join(extra)}]" if extra else "")


def _graph_note(rows: list[dict]) -> str:
    """How the graphed Transformer rows attend (empty when there are none)."""
    bucket = next((r["attention_bucket"] for r in rows if "attention_bucket" in r), None)
    if bucket is None:
        return ""
    attended = (f"the filled positions rounded up to a multiple of {bucket}" if bucket
                else "the whole preallocated cache")
    return (f" Transformer [CUDA graph]: a static KV cache, one graph per attended length replayed per token, "
            f"each step attending to {attended} under a mask (the eager rows attend to the filled positions only).")


def generate_markdown(rows: list[dict], largest: dict | None, env: dict, size: BenchSize) -> str:
    from mamba_bio_audio.benchmarks.report import commit_text, markdown_table

    first = (rows or (largest or {}).get("rows") or [{}])[0]
    text = (f"# Generation throughput\n\n{env['device']}, torch {env['torch']}, triton {env['triton']}, "
            f"mamba_ssm {env['mamba_ssm']}, {env['date']}{commit_text(env)}. Greedy decoding, {first.get('dtype', '')} weights, "
            f"random weights and a random prompt of {first.get('prompt_len', '')} tokens; one timed run = "
            f"prefill + all decode steps; setup s = building the decoder (graph capture) + the first call's excess "
            f"over a warm call (mamba_ssm captures its graphs there), for every model; peak GiB over the timed "
            f"calls. Mamba: "
            f"d_model {size.d_model}, {size.n_layer} layers; Transformer: {size.transformer_layers} layers, "
            f"{size.n_head} heads, KV cache, SDPA; vocab {size.vocab_size}.")
    text += _graph_note(rows + ((largest or {}).get("rows") or []))
    if rows:
        table = markdown_table(
            ["model", "batch", "new tokens", "tokens/s", "ms/step", "peak GiB", "setup s", "note"],
            [[_label(r), r["batch"], r["new_tokens"], r.get("tokens_per_second"), r.get("ms_per_step"),
              r.get("peak_gib"), r.get("setup_seconds"), r.get("error") or r.get("note", "")] for r in rows])
        text += f"\n\n## Fixed batch sizes (median of repeated runs)\n\n{table}"
    if largest:
        table = markdown_table(
            ["model", "largest batch", "new tokens", "tokens/s", "ms/step", "peak GiB", "note"],
            [[_label(r), r.get("batch", r.get("largest_batch")), r["new_tokens"], r.get("tokens_per_second"),
              r.get("ms_per_step"), r.get("peak_gib"),
              r.get("error") or (f"search capped at {largest['max_batch']}" if r.get("capped") else "")]
             for r in largest["rows"]])
        ratio = f"**{largest['ratio']:.2f}x**" if largest.get("ratio") else "**—**"
        if largest.get("ratio_graphed"):
            ratio += f" (Transformer eager), **{largest['ratio_graphed']:.2f}x** (Transformer under CUDA graphs)"
        text += (f"\n\n## Largest batch that fits (one run each)\n\n{table}\n\nMamba / Transformer throughput at "
                 f"their largest batches: {ratio} (the Mamba paper reports about 5x).")
    return text


def generate_figure(path, rows: list[dict], largest: dict | None):
    """tokens/s per batch size (log scale), one bar per model; the largest-batch throughputs in a second panel."""
    def name(r: dict) -> str:  # the model, and for the Transformer its decode mode
        return LABELS[r["model"]] + (" [CUDA graph]" if _mode(r) else "")

    batches = list(dict.fromkeys(r["batch"] for r in rows))
    models = list(dict.fromkeys(name(r) for r in rows))
    series = {m: [next((r.get("tokens_per_second") for r in rows if name(r) == m and r["batch"] == b),
                       None) for b in batches] for m in models}
    panels = [([f"batch {b}" for b in batches], series, "tokens/s", True)]
    if largest:
        panels.append(([name(r) + f"\nbatch {r.get('batch', '?')}" for r in largest["rows"]],
                       {"largest batch": [r.get("tokens_per_second") for r in largest["rows"]]},
                       "tokens/s at the largest batch", False))
    return bar_chart(path, panels, "generation throughput")
