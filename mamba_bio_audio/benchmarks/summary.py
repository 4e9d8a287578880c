"""One table from several benchmark reports (``mba bench summary``): ours beside the peer of each measure, and
the ratio ours / peer, for the README's performance table.

It reads the JSON that ``mba bench scan | train | generate | cpu`` write and pairs rows measured in the same run:

- scan (``bench_scan.json``): forward ms, forward + backward ms and peak extra GiB of each Triton row (``triton``
  and its variants) against the ``cuda`` row (mamba_ssm) at the same shape;
- train (``bench_train.json``): tokens/s (each step synchronised, and back-to-back where measured) and peak GiB
  of each of our rows against ``mamba_ssm`` at the same shape, a CUDA-graphed row against a CUDA-graphed peer
  when the report has one (the peer's mode is in its name: "mamba_ssm [eager]" / "[CUDA graph]");
- generate (``bench_generate.json``): ms per decode step and tokens/s of ``mamba`` against ``mamba_ssm`` at each
  batch size, and the largest-batch throughput against the Transformer (eager and CUDA-graphed);
- cpu (``bench_cpu*.json``): tokens/s of a training step of ours against transformers' ``MambaForCausalLM``.

Every row of ours gives a summary row: a failed one carries its error in the ours cell. A peer that failed, is
missing or was not measured like ours leaves its value empty and says why in the note column. Which direction is
better is a column of its own ("lower" for times and memory, "higher" for throughput), so the ratio reads the same
way everywhere: ours divided by the peer.

A report names its kind in its ``"kind"`` field (written since 2026-12-07); older reports are told apart by their
rows. Reports of a benchmark without a peer (``bench memory``, ``bench packed``, scan variants) add no rows: they
are listed as skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from mamba_bio_audio.errors import UserError

HEADERS = ["measure", "shape", "ours", "peer", "peer value", "ours / peer", "better", "note", "device, date, commit",
           "file"]
#: report kinds with no peer to compare against: listed as skipped, with the reason
NO_PEER = {"memory": "bench memory measures our model alone", "packed": "bench packed compares our own modes",
           "scan-variants": "scan variants compare our own tunings", "context-parallel": "no peer",
           "ddp": "no peer"}


def load_report(path: Path) -> tuple[str, dict]:
    """(kind, data) of one benchmark JSON; kind is "scan", "train", "generate", "cpu", "summary" (this module's
    own report: it adds no rows) or one of :data:`NO_PEER`. The report's ``"kind"`` field decides when present;
    otherwise its rows do. A UserError for a file that is not JSON or not one of those reports."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable benchmark JSON ({type(e).__name__})") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind is not None:
        if kind in NO_PEER:
            return kind, data
        if kind not in ROWS:
            raise UserError(f"{path}: a report of kind {kind!r}: not one of mba bench scan, train, generate, cpu, "
                            "summary, memory or packed")
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise UserError(f"{path}: no 'rows' list: not a report of mba bench scan, train, generate or cpu")
    return kind or _kind_of_rows(path, data, rows), data


def _kind_of_rows(path: Path, data: dict, rows: list) -> str:
    """The kind of a report written before reports named it, from the keys of its rows."""
    keys = set().union(*(r.keys() for r in rows if isinstance(r, dict))) if rows else set()
    if {"measure", "peer", "ratio"} <= keys:  # an earlier summary (a glob over report folders meets it)
        return "summary"
    if {"backend", "dim"} <= keys:
        return "scan"
    if "dim" in keys and ("chunk_size" in keys or "max_rel_diff_vs_first" in keys):  # dev/scan_variants.py
        return "scan-variants"
    if "checkpoint_level" in keys:  # bench memory: its rows also have seqlen and tokens_per_second
        return "memory"
    if {"mode", "useful_tokens"} <= keys:
        return "packed"
    if "ratios" in data:
        return "cpu"
    if "new_tokens" in keys or "largest_batch" in data:
        return "generate"
    if {"tokens_per_second", "seqlen", "model"} <= keys:
        return "train"
    raise UserError(f"{path}: rows of an unknown kind: not a report of mba bench scan, train, generate or cpu")


def _where(data: dict) -> str:
    from mamba_bio_audio.benchmarks.report import where

    return where(data.get("environment") or {})


def _row(measure: str, shape: str, ours, peer_name: str, peer, better: str, where: str, file: str,
         note: str = "") -> dict:
    ratio = (ours / peer if isinstance(ours, (int, float)) and isinstance(peer, (int, float)) and peer
             else None)
    return {"measure": measure, "shape": shape, "ours": ours, "peer": peer_name, "peer_value": peer,
            "ratio": ratio, "better": better, "note": note, "where": where, "file": file}


def _ours(r: dict, key: str):
    """Our figure for ``key``, or "error: ..." for a failed row (the summary keeps it)."""
    if "error" in r:
        return f"error: {r['error']}"
    return r.get(key)


def _peer_note(peer: dict | None, name: str, key: str) -> str:
    """Why the peer's value is empty or not like ours: its error or note, its absence, or its slow path."""
    if not peer:
        return f"no {name} row in this report"
    notes = []
    if "error" in peer:
        notes.append(f"{name}: {peer['error']}")
    elif peer.get(key) is None:
        notes.append(f"{name}: {peer.get('note') or 'not measured'}")
    if peer.get("peer_fast_path") is False:
        notes.append(f"{name} off its fast path ({peer.get('peer_fast_path_note', 'see the report')})")
    return "; ".join(notes)


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def scan_rows(data: dict, file: str) -> list[dict]:
    where, rows, out = _where(data), data["rows"], []
    for r in rows:
        if not str(r["backend"]).startswith("triton"):
            continue
        shape = (r["batch"], r["dim"], r["seqlen"])
        peer = next((p for p in rows if p["backend"] == "cuda" and (p["batch"], p["dim"], p["seqlen"]) == shape),
                    None)
        name = "scan" if r["backend"] == "triton" else f"scan [{r['backend']}]"
        for key, what, better in (("fwd_ms", "fwd ms", "lower"), ("fwd_bwd_ms", "fwd+bwd ms", "lower"),
                                  ("peak_extra_gib", "peak extra GiB", "lower")):
            if key in r or ("error" in r and key == "fwd_ms"):  # a failed row: once, with its error
                out.append(_row(f"{name} {what}", str(shape), _ours(r, key), "mamba_ssm",
                                None if peer is None or "error" in peer else peer.get(key), better, where, file,
                                _peer_note(peer, "mamba_ssm", key)))
    return out


def _train_label(r: dict) -> str:
    from mamba_bio_audio.benchmarks.train import model_label

    label = model_label(r).replace("Mamba (ours) ", "")
    return f"train {label}" + (" [CUDA graph]" if r.get("cuda_graph") else "")


def _train_peer(rows: list[dict], r: dict) -> dict | None:
    """The mamba_ssm row at r's shape, in r's mode (CUDA graph or eager) when the report has one."""
    same_shape = [p for p in rows if p["model"] == "mamba_ssm" and (p["batch"], p["seqlen"]) == (r["batch"],
                                                                                                  r["seqlen"])]
    graphed = bool(r.get("cuda_graph"))
    return next((p for p in same_shape if bool(p.get("cuda_graph")) == graphed), None) or \
        next(iter(same_shape), None)


OLD_GRAPH_PEAK_NOTE = "graphed, older report: setup peak (its replays' peak left out the graph's memory pool)"


def _graph_peak(r: dict) -> dict:
    """r with a graphed row's ``peak_gib`` taken from its setup peak when the report predates ``peak_measure``
    "reserved" (before 2026-12-07 17:30 UTC a replay's peak was ``max_memory_allocated``, which leaves out the
    graph's private pool, where the step's activations live; the capture's peak holds them)."""
    if r.get("cuda_graph") and r.get("peak_measure") != "reserved" and "setup_peak_gib" in r:
        return {**r, "peak_gib": r["setup_peak_gib"], "peak_note": OLD_GRAPH_PEAK_NOTE}
    return r


def train_rows(data: dict, file: str) -> list[dict]:
    where, rows, out = _where(data), [_graph_peak(r) for r in data["rows"]], []
    for r in rows:
        if r["model"] != "mamba":
            continue
        shape = str((r["batch"], r["seqlen"]))
        peer = _train_peer(rows, r)
        name = "mamba_ssm" + ((" [CUDA graph]" if peer.get("cuda_graph") else " [eager]") if peer else "")
        mode_note = ("" if peer is None or bool(peer.get("cuda_graph")) == bool(r.get("cuda_graph")) else
                     "modes differ: ours " + ("CUDA graph" if r.get("cuda_graph") else "eager") +
                     ", mamba_ssm " + ("CUDA graph" if peer.get("cuda_graph") else "eager"))
        spread = (f"ours over {len(r['rounds_tokens_per_second'])} rounds: {r['spread']:.1%} spread"
                  if r.get("rounds_tokens_per_second") and r.get("spread") is not None else "")
        measures = [("tokens_per_second", "tokens/s", "higher"),
                    ("back_to_back_tokens_per_second", "tokens/s (back-to-back steps)", "higher"),
                    ("peak_gib", "peak GiB", "lower")]
        for key, what, better in measures:
            if key not in r and not (key == "tokens_per_second" and "error" in r):
                continue
            value = None if peer is None or "error" in peer else peer.get(key)
            out.append(_row(f"{_train_label(r)} {what}", shape, _ours(r, key), name, value, better, where, file,
                            _join(_peer_note(peer, "mamba_ssm", key), mode_note,
                                  spread if key == "tokens_per_second" else "",
                                  r.get("peak_note", "") if key == "peak_gib" else "")))
    return out


def generate_rows(data: dict, file: str) -> list[dict]:
    where, rows, out = _where(data), data["rows"], []
    for r in rows:
        if r["model"] != "mamba":
            continue
        batch = r.get("batch")
        peer = next((p for p in rows if p["model"] == "mamba_ssm" and p.get("batch") == batch
                     and "ms_per_step" in p), None) or \
            next((p for p in rows if p["model"] == "mamba_ssm" and p.get("batch") == batch), None)
        for key, what, better in (("ms_per_step", "decode ms/step", "lower"),
                                  ("tokens_per_second", "decode tokens/s", "higher")):
            out.append(_row(what, f"batch {batch}", _ours(r, key), "mamba_ssm",
                            None if peer is None or "error" in peer else peer.get(key), better, where, file,
                            _peer_note(peer, "mamba_ssm", key)))
    largest = data.get("largest_batch") or {}
    by_model = {}
    for r in largest.get("rows", []):
        by_model.setdefault((r["model"], bool(r.get("cuda_graph"))), r)
    ours = next((r for (m, _), r in by_model.items() if m == "mamba"), None)
    if ours is None:
        return out
    for graphed in (False, True):
        peer = by_model.get(("transformer", graphed))
        name = "Transformer" + (" (CUDA graph)" if graphed else " (eager)")
        if peer is None and graphed:
            continue  # off CUDA, or an older report: no graphed Transformer
        shape = f"batch {_largest(ours)} vs {_largest(peer) if peer else '—'}"
        out.append(_row("largest-batch generation tokens/s", shape, _ours(ours, "tokens_per_second"), name,
                        None if peer is None or "error" in peer else peer.get("tokens_per_second"), "higher",
                        where, file, _peer_note(peer, name, "tokens_per_second")))
    return out


def _largest(r: dict):
    """The batch of a largest-batch row: the timed one, else the search's result (a failed row may have neither)."""
    return r.get("batch", r.get("largest_batch", "—"))


def cpu_rows(data: dict, file: str) -> list[dict]:
    where, rows, out = _where(data), data["rows"], []
    for r in rows:
        if r["model"] != "ours":
            continue
        peer = next((p for p in rows if p["model"] != "ours" and p["seqlen"] == r["seqlen"]
                     and p["batch"] == r["batch"]), None)
        name = "transformers MambaForCausalLM"
        out.append(_row("CPU training step tokens/s", str((r["batch"], r["seqlen"])),
                        _ours(r, "tokens_per_second"), name,
                        None if peer is None or "error" in peer else peer.get("tokens_per_second"), "higher", where,
                        file, _peer_note(peer, name, "tokens_per_second")))
    return out


ROWS = {"scan": scan_rows, "train": train_rows, "generate": generate_rows, "cpu": cpu_rows,
        "summary": lambda data, file: []}


def summarize_reports(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """(summary rows of every report in ``paths`` in the order given, skipped reports as {"file", "kind",
    "reason"}): reports of a benchmark without a peer add no rows."""
    rows, skipped = [], []
    names = [Path(p).name for p in paths]
    for path in paths:
        # a file's name, or its folder and name where several reports share the name (train_variants/v1, v2, ...)
        label = Path(path).name if names.count(Path(path).name) == 1 else f"{Path(path).parent.name}/{Path(path).name}"
        kind, data = load_report(path)
        if kind in NO_PEER:
            skipped.append({"file": str(path), "kind": kind, "reason": NO_PEER[kind]})
            continue
        try:
            rows += ROWS[kind](data, label)
        except (KeyError, TypeError, AttributeError) as e:  # a report edited by hand or cut short
            raise UserError(f"{path}: a {kind} report whose rows lack what mba bench {kind} writes "
                            f"({type(e).__name__}: {e})") from None
    return rows, skipped


def summarize(paths: list[Path]) -> list[dict]:
    """The summary rows of every report in ``paths``, in the order given (:func:`summarize_reports`)."""
    return summarize_reports(paths)[0]


def ratio_text(ratio: float | None) -> str | None:
    """0.84 -> "0.84x"; below 0.1 as a fraction, 0.00279 -> "1/358x" (two digits would read 0.00x)."""
    if ratio is None:
        return None
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"1/{1 / ratio:,.0f}x"


def summary_markdown(rows: list[dict], skipped: list[dict] = ()) -> str:
    from mamba_bio_audio.benchmarks.report import markdown_table

    table = markdown_table(HEADERS, [
        [r["measure"], r["shape"], r["ours"], r["peer"], r["peer_value"], ratio_text(r["ratio"]), r["better"],
         r.get("note", ""), r["where"], r["file"]] for r in rows])
    text = ("# Benchmark summary: ours beside the peer measured in the same run\n\n"
            "ours / peer: ours divided by the peer's figure; \"better\" says which way is better (lower for times "
            "and memory, higher for throughput). A failed row of ours shows its error; the note says why a peer's "
            "value is empty (its error, its note, or no such row in that report) or when the two were not "
            "measured alike.\n\n" + table)
    if skipped:
        text += "\n\nSkipped (no peer): " + "; ".join(f"{s['file']} ({s['reason']})" for s in skipped) + "."
    return text
