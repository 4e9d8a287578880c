"""One table from several benchmark reports (``mba bench summary``): ours beside the peer of each measure, and
the ratio ours / peer, for the README's performance table.

It reads the JSON that ``mba bench scan | train | generate | cpu`` write and pairs rows measured in the same run:

- scan (``bench_scan.json``): forward ms, forward + backward ms and peak extra GiB of each Triton row (``triton``
  and its variants) against the ``cuda`` row (mamba_ssm) at the same shape;
- train (``bench_train.json``): tokens/s and peak GiB of each of our rows against ``mamba_ssm`` at the same shape;
- generate (``bench_generate.json``): ms per decode step and tokens/s of ``mamba`` against ``mamba_ssm`` at each
  batch size, and the largest-batch throughput against the Transformer (eager and CUDA-graphed);
- cpu (``bench_cpu*.json``): seconds per step of ours against transformers' ``MambaForCausalLM``.

A report without the peer's row gives our figure with the peer left empty. Which direction is better is a column
of its own ("lower" for times and memory, "higher" for throughput), so the ratio reads the same way everywhere:
ours divided by the peer.
"""

from __future__ import annotations

import json
from pathlib import Path

from mamba_bio_audio.errors import UserError

HEADERS = ["measure", "shape", "ours", "peer", "peer value", "ours / peer", "better", "device, date", "file"]


def load_report(path: Path) -> tuple[str, dict]:
    """(kind, data) of one benchmark JSON; kind is "scan", "train", "generate", "cpu" or "summary" (this module's
    own report: it adds no rows). A UserError for a file that is not JSON or not one of those reports."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable benchmark JSON ({type(e).__name__})") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise UserError(f"{path}: no 'rows' list: not a report of mba bench scan, train, generate or cpu")
    keys = set().union(*(r.keys() for r in rows if isinstance(r, dict))) if rows else set()
    if {"measure", "peer", "ratio"} <= keys:  # an earlier summary (a glob over report folders meets it)
        return "summary", data
    if {"backend", "dim"} <= keys:
        return "scan", data
    if "ratios" in data:
        return "cpu", data
    if "new_tokens" in keys:
        return "generate", data
    if "tokens_per_second" in keys and "seqlen" in keys:
        return "train", data
    raise UserError(f"{path}: rows of an unknown kind: not a report of mba bench scan, train, generate or cpu")


def _where(data: dict) -> str:
    env = data.get("environment", {})
    device = str(env.get("device", "?")).replace("NVIDIA ", "")
    return f"{device}, {str(env.get('date', '?'))[:16]}"


def _row(measure: str, shape: str, ours, peer_name: str, peer, better: str, where: str, file: str) -> dict:
    ratio = ours / peer if isinstance(ours, (int, float)) and isinstance(peer, (int, float)) and peer else None
    return {"measure": measure, "shape": shape, "ours": ours, "peer": peer_name, "peer_value": peer,
            "ratio": ratio, "better": better, "where": where, "file": file}


def scan_rows(data: dict, file: str) -> list[dict]:
    where, rows, out = _where(data), data["rows"], []
    for r in rows:
        if not str(r["backend"]).startswith("triton") or "error" in r:
            continue
        shape = (r["batch"], r["dim"], r["seqlen"])
        peer = next((p for p in rows if p["backend"] == "cuda" and (p["batch"], p["dim"], p["seqlen"]) == shape
                     and "error" not in p), {})
        name = "scan" if r["backend"] == "triton" else f"scan [{r['backend']}]"
        for key, what, better in (("fwd_ms", "fwd ms", "lower"), ("fwd_bwd_ms", "fwd+bwd ms", "lower"),
                                  ("peak_extra_gib", "peak extra GiB", "lower")):
            if key in r:
                out.append(_row(f"{name} {what}", str(shape), r[key], "mamba_ssm", peer.get(key), better, where,
                                file))
    return out


def _train_label(r: dict) -> str:
    from mamba_bio_audio.benchmarks.train import model_label

    label = model_label(r).replace("Mamba (ours) ", "")
    return f"train {label}" + (" [CUDA graph]" if r.get("cuda_graph") else "")


def train_rows(data: dict, file: str) -> list[dict]:
    where, rows, out = _where(data), data["rows"], []
    for r in rows:
        if r["model"] != "mamba" or "tokens_per_second" not in r:
            continue
        shape = (r["batch"], r["seqlen"])
        peer = next((p for p in rows if p["model"] == "mamba_ssm" and (p["batch"], p["seqlen"]) == shape), {})
        out.append(_row(f"{_train_label(r)} tokens/s", str(shape), r["tokens_per_second"], "mamba_ssm",
                        peer.get("tokens_per_second"), "higher", where, file))
        if "peak_gib" in r:
            out.append(_row(f"{_train_label(r)} peak GiB", str(shape), r["peak_gib"], "mamba_ssm",
                            peer.get("peak_gib"), "lower", where, file))
    return out


def generate_rows(data: dict, file: str) -> list[dict]:
    where, rows, out = _where(data), data["rows"], []
    for r in rows:
        if r["model"] != "mamba" or "ms_per_step" not in r:
            continue
        peer = next((p for p in rows if p["model"] == "mamba_ssm" and p["batch"] == r["batch"]
                     and "ms_per_step" in p), {})
        out.append(_row("decode ms/step", f"batch {r['batch']}", r["ms_per_step"], "mamba_ssm",
                        peer.get("ms_per_step"), "lower", where, file))
        out.append(_row("decode tokens/s", f"batch {r['batch']}", r["tokens_per_second"], "mamba_ssm",
                        peer.get("tokens_per_second"), "higher", where, file))
    largest = data.get("largest_batch") or {}
    by_model = {}
    for r in largest.get("rows", []):
        by_model.setdefault((r["model"], bool(r.get("cuda_graph"))), r)
    ours = next((r for (m, _), r in by_model.items() if m == "mamba"), None)
    for graphed in (False, True):
        peer = by_model.get(("transformer", graphed))
        if ours is not None and peer is not None:
            name = "Transformer" + (" (CUDA graph)" if graphed else " (eager)")
            out.append(_row("largest-batch generation tokens/s", f"batch {ours['batch']} vs {peer['batch']}",
                            ours.get("tokens_per_second"), name, peer.get("tokens_per_second"), "higher", where,
                            file))
    return out


def cpu_rows(data: dict, file: str) -> list[dict]:
    where, rows, out = _where(data), data["rows"], []
    for r in rows:
        if r["model"] != "ours":
            continue
        peer = next((p for p in rows if p["model"] != "ours" and p["seqlen"] == r["seqlen"]
                     and p["batch"] == r["batch"]), {})
        out.append(_row("CPU training step s", str((r["batch"], r["seqlen"])), r.get("median_s"),
                        "transformers MambaForCausalLM", peer.get("median_s"), "lower", where, file))
    return out


ROWS = {"scan": scan_rows, "train": train_rows, "generate": generate_rows, "cpu": cpu_rows,
        "summary": lambda data, file: []}


def summarize(paths: list[Path]) -> list[dict]:
    """The summary rows of every report in ``paths``, in the order given."""
    rows = []
    for path in paths:
        kind, data = load_report(path)
        try:
            rows += ROWS[kind](data, Path(path).name)
        except (KeyError, TypeError, AttributeError) as e:  # a report edited by hand or cut short
            raise UserError(f"{path}: a {kind} report whose rows lack what mba bench {kind} writes "
                            f"({type(e).__name__}: {e})") from None
    return rows


def ratio_text(ratio: float | None) -> str | None:
    """0.84 -> "0.84x"; below 0.1 as a fraction, 0.00279 -> "1/358x" (two digits would read 0.00x)."""
    if ratio is None:
        return None
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"1/{1 / ratio:,.0f}x"


def summary_markdown(rows: list[dict]) -> str:
    from mamba_bio_audio.benchmarks.report import markdown_table

    table = markdown_table(HEADERS, [
        [r["measure"], r["shape"], r["ours"], r["peer"], r["peer_value"], ratio_text(r["ratio"]), r["better"],
         r["where"], r["file"]] for r in rows])
    return ("# Benchmark summary: ours beside the peer measured in the same run\n\n"
            "ours / peer: ours divided by the peer's figure; \"better\" says which way is better (lower for times "
            "and memory, higher for throughput). An empty peer: its row is absent from that report.\n\n" + table)
