"""A CPU training step of our MambaLM beside transformers' ``MambaForCausalLM`` on its slow path (``mba bench cpu``).

Both models have the same shape and the same weights: ours is built seeded, exported with
``save_pretrained(layout="transformers")`` and loaded by ``transformers.MambaForCausalLM.from_pretrained``. Before
any timing, both give the logits of the same tokens (batch, seqlen) within ``atol`` (a :class:`UserError`
otherwise). A step is forward + cross-entropy of the next tokens (logits (batch, seqlen - 1, vocab) against
ids[:, 1:]) + backward, in fp32, with ``torch.set_num_threads(threads)``; no optimizer. ``warmup`` untimed then
``repeats`` timed steps, alternating between the two models so that a change of load on a shared machine hits both.
Peak memory: the process' peak resident set during each step, the most over a model's steps at a length. On Linux
the kernel's high-water mark is reset before each step (``/proc/self/clear_refs``) and read after it (``VmHWM``), so
a reading holds that step alone (on top of what is resident: both models' weights); where that is not possible
(``rss_method`` "ru_maxrss") it is the process' peak so far, which only grows.

transformers' path: on CPU inputs its wrappers of mamba_ssm / causal_conv1d run the torch functions
(``modeling_mamba.mamba_selective_scan``); with ``use_mambapy`` off and no ``torch.compile``, that is the
sequential loop over time steps. :func:`transformers_path` records what decided it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from mamba_bio_audio.errors import UserError

MODELS = ("ours", "transformers")
LABELS = {"ours": "MambaLM (ours)", "transformers": "transformers MambaForCausalLM"}


def import_transformers():
    """The ``transformers`` module, or a one-line UserError. transformers >= 5 imports the PyPI package
    ``kernels``, which this repository's top-level ``kernels/`` folder shadows when the repository root is on
    ``sys.path`` (running from the root); the root is left off ``sys.path`` for this import."""
    if sys.modules.get("transformers") is None:
        root = Path(__file__).resolve().parents[2]
        saved = sys.path[:]
        sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != root]
        try:
            import transformers  # noqa: F401
            import transformers.models.mamba.modeling_mamba  # noqa: F401
        except ImportError as e:
            raise UserError(f"bench cpu needs transformers with its Mamba model (pip install -e '.[dev]'): {e}") \
                from None
        finally:
            sys.path[:] = saved
    return sys.modules["transformers"]


def build_pair(d_model: int, n_layer: int, vocab_size: int, seed: int = 0):
    """(ours, theirs): our MambaLM (seeded, torch reference ops) and transformers' MambaForCausalLM with the same
    weights, both in training mode on the CPU in fp32; theirs has ``use_mambapy`` and ``use_associative_scan``
    off."""
    from mamba_bio_audio import MambaConfig, MambaLM
    from mamba_bio_audio.modules.mixer import set_backend

    transformers = import_transformers()
    torch.manual_seed(seed)
    ours = set_backend(MambaLM(MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=vocab_size)), "reference")
    with tempfile.TemporaryDirectory() as folder:
        ours.save_pretrained(Path(folder) / "model", layout="transformers")
        theirs = transformers.MambaForCausalLM.from_pretrained(Path(folder) / "model", use_mambapy=False,
                                                               use_associative_scan=False)
    return ours.float().train(), theirs.float().train()


def transformers_path(model) -> dict:
    """What decides the path of transformers' Mamba mixer here: its config flags, whether mamba_ssm,
    causal_conv1d and mambapy import, and the resulting path name (``"sequential torch loop"`` on CPU inputs
    without mambapy; ``"mambapy pscan"`` with it and ``use_mambapy``)."""
    config = model.config
    found = {name: importlib.util.find_spec(name) is not None for name in ("mamba_ssm", "causal_conv1d", "mambapy")}
    use_mambapy = bool(getattr(config, "use_mambapy", False))
    path = "mambapy pscan" if use_mambapy and found["mambapy"] else "sequential torch loop"
    return {"path": path, "use_mambapy": use_mambapy,
            "use_associative_scan": bool(getattr(config, "use_associative_scan", False)),
            "importable": found,
            "note": "mamba_ssm / causal_conv1d kernels are not used for CPU inputs; the torch functions of "
                    "transformers.models.mamba.modeling_mamba run (mamba_selective_scan's recurrent iteration)"}


class _Fallbacks(logging.Handler):
    """Collects transformers' log lines saying a function falls back to its PyTorch implementation."""

    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "falling back" in message and message not in self.messages:
            self.messages.append(message)


@contextlib.contextmanager
def fallback_messages():
    """Yields a list that receives transformers' "falling back to its reference PyTorch implementation" lines
    logged meanwhile (each is logged once per process, so a second model in the same process adds none)."""
    handler, logger = _Fallbacks(), logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def logits_of(name: str, model, ids: torch.Tensor) -> torch.Tensor:
    """ids (batch, seqlen) -> logits (batch, seqlen, vocab) of either model."""
    return model(ids) if name == "ours" else model(ids).logits


def check_logits(ours, theirs, ids: torch.Tensor, atol: float) -> float:
    """Max |ours - theirs| over the logits of ``ids`` (no grad); a UserError above ``atol``."""
    with torch.no_grad():
        diff = (logits_of("ours", ours, ids) - logits_of("transformers", theirs, ids)).abs().max().item()
    if not diff <= atol:
        raise UserError(f"logits differ from transformers' by {diff:.3e} at seqlen {ids.shape[1]} (> --atol {atol})")
    return diff


def train_step(name: str, model, ids: torch.Tensor) -> tuple[float, float]:
    """One forward + next-token cross-entropy + backward; (seconds, loss)."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    logits = logits_of(name, model, ids)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return time.perf_counter() - start, loss.item()


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


def reset_peak_rss() -> bool:
    """Reset this process' resident-set high-water mark to its current size (Linux >= 4.0: "5" written to
    ``/proc/self/clear_refs``); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return hwm_gib() is not None
    except OSError:
        return False


def hwm_gib() -> float | None:
    """The high-water mark of this process' resident set (``VmHWM`` of ``/proc/self/status``), None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def step_peak_rss(fn: Callable[[], object]) -> tuple[object, float, str]:
    """(fn(), the peak resident GiB while it ran, the method): "VmHWM" (the high-water mark reset before), else
    "ru_maxrss" (the process' peak so far)."""
    if reset_peak_rss():
        out = fn()
        peak = hwm_gib()
        if peak is not None:
            return out, peak, "VmHWM"
    else:
        out = fn()
    return out, peak_rss_gib(), "ru_maxrss"


@contextlib.contextmanager
def torch_threads(n: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _row(name: str, batch: int, seqlen: int, times: list[float], loss: float, rss: float, method: str) -> dict:
    median = statistics.median(times)
    return {"model": name, "batch": batch, "seqlen": seqlen, "seconds": times, "median_s": median,
            "min_s": min(times), "max_s": max(times), "tokens_per_second": batch * seqlen / median, "loss": loss,
            "peak_rss_gib": rss, "rss_method": method}


def run_cpu_bench(*, lengths: list[int], batch: int, d_model: int, n_layer: int, vocab_size: int, threads: int,
                  repeats: int, warmup: int, atol: float, seed: int = 0,
                  progress: Callable[[str], None] = print) -> dict:
    """Build both models, check their logits at each length, time ``repeats`` steps of each; the report dict
    (rows per model and length, ratios ours/theirs in tokens/s, the logits differences, transformers' path,
    the load average before and after)."""
    load_before = os.getloadavg()
    with torch_threads(threads):
        ours, theirs = build_pair(d_model, n_layer, vocab_size, seed)
        models = {"ours": ours, "transformers": theirs}
        rows, checks, ratios, fallbacks = [], [], [], []
        for seqlen in lengths:
            ids = torch.randint(0, vocab_size, (batch, seqlen), generator=torch.Generator().manual_seed(seed + 1))
            progress(f"cpu bench: checking the logits at ({batch}, {seqlen})")
            with fallback_messages() as messages:
                diff = check_logits(ours, theirs, ids, atol)
            fallbacks += messages
            checks.append({"batch": batch, "seqlen": seqlen, "max_abs_diff": diff})
            rss, times, losses, method = {}, {m: [] for m in MODELS}, {}, {}
            for i in range(warmup + repeats):
                for name in MODELS:
                    (seconds, losses[name]), peak, method[name] = step_peak_rss(
                        lambda name=name, ids=ids: train_step(name, models[name], ids))
                    rss[name] = max(rss.get(name, 0.0), peak)
                    timed = i >= warmup
                    if timed:
                        times[name].append(seconds)
                    what = f"step {i - warmup + 1}/{repeats}" if timed else f"untimed step {i + 1}/{warmup}"
                    progress(f"cpu bench: {name} ({batch}, {seqlen}) {what}: {seconds:.3f} s")
            pair = [_row(name, batch, seqlen, times[name], losses[name], rss[name], method[name]) for name in MODELS]
            rows += pair
            ratios.append({"batch": batch, "seqlen": seqlen,
                           "ratio": pair[0]["tokens_per_second"] / pair[1]["tokens_per_second"]})
    path = {**transformers_path(theirs), "fallback_messages": fallbacks}
    return {"rows": rows, "ratios": ratios, "logits_check": checks, "atol": atol, "transformers": path,
            "ours_backend": "reference", "threads": threads, "repeats": repeats, "warmup": warmup,
            "size": {"d_model": d_model, "n_layer": n_layer, "vocab_size": vocab_size,
                     "parameters": sum(p.numel() for p in ours.parameters())},
            "load_average_before": list(load_before), "load_average_after": list(os.getloadavg())}


def _rss_text(rows: list[dict]) -> str:
    if rows and all(r.get("rss_method") == "VmHWM" for r in rows):
        return ("Peak RSS: the process' resident high-water mark, reset before each step and read after it (the "
                "most over a model's steps); it includes what stays resident (both models' weights), not the other "
                "model's earlier peaks.")
    return ("Peak RSS: the process' maximum so far after a model's steps (ru_maxrss, which only grows): a later "
            "reading includes earlier peaks, the other model's included.")


def cpu_markdown(data: dict, env: dict) -> str:
    """The report: one row per model and length, the ratio, the logits check, transformers' path, the machine."""
    from mamba_bio_audio.benchmarks.report import commit_text, markdown_table

    size, tf = data["size"], data["transformers"]
    rows = [[LABELS[r["model"]], f"({r['batch']}, {r['seqlen']})", r["median_s"], r["min_s"], r["max_s"],
             r["tokens_per_second"], r["peak_rss_gib"]] for r in data["rows"]]
    ratios = "; ".join(f"({r['batch']}, {r['seqlen']}): **{r['ratio']:.2f}x**" for r in data["ratios"])
    checks = ", ".join(f"{c['max_abs_diff']:.2e} at ({c['batch']}, {c['seqlen']})" for c in data["logits_check"])
    load = lambda xs: " / ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    return "\n".join([
        "# CPU training step: ours vs transformers' MambaForCausalLM (slow path)", "",
        f"d_model {size['d_model']}, {size['n_layer']} layers, vocab {size['vocab_size']} "
        f"({size['parameters']:,} parameters), fp32, forward + next-token cross-entropy + backward, "
        f"{data['threads']} torch threads, {data['repeats']} timed steps each after {data['warmup']} untimed, the two "
        "models alternating.", "",
        markdown_table(["model", "(batch, seqlen)", "median s/step", "min s", "max s", "tokens/s",
                        "peak RSS GiB (process, during its steps)"], rows), "",
        f"Ours / transformers in tokens/s: {ratios}.", "",
        f"Same weights, same logits before timing: max |difference| {checks} (tolerance {data['atol']:g}).", "",
        f"Ours: the torch reference ops (backend {data['ours_backend']}). transformers: **{tf['path']}** "
        f"(use_mambapy {tf['use_mambapy']}, use_associative_scan {tf['use_associative_scan']}; importable: "
        + ", ".join(f"{k} {v}" for k, v in tf["importable"].items()) + f"); {tf['note']}.", "",
        *([f"transformers said: {' / '.join(tf['fallback_messages'])}", ""] if tf["fallback_messages"] else []),
        _rss_text(data["rows"]), "",
        f"Load average (1 / 5 / 15 min) before {load(data['load_average_before'])}, after "
        f"{load(data['load_average_after'])}.", "",
        f"{env['device']}; torch {env['torch']}, transformers {env.get('transformers')}, python {env['python']}, "
        f"mamba_bio_audio {env['mamba_bio_audio']}; {env['date']}{commit_text(env)}.",
    ])
