"""The Mamba paper's S4/S6 ablation table (Table 1: selective copying for {Mamba block, no gate} x {S6, S4D}) and
its induction-heads curve (Mamba S6 at test lengths 2^k): :func:`run_table` trains the runs with
:func:`~mamba_bio_audio.tasks.synthetic.run_task` and writes the report (JSON, markdown, PNG).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from mamba_bio_audio.errors import UserError
from mamba_bio_audio.files import check_output_folder, output_folder
from mamba_bio_audio.recipes.outputs import plot_curve
from mamba_bio_audio.tasks.synthetic import (
    ARCHS,
    PAPER_SOURCE,
    PRESETS,
    TASKS,
    choose_preset,
    log_to_stderr,
    run_task,
    stop_note,
)

# The paper's Table 1 (selective copying accuracy, %) for the rows our layers express; its "S4" is our S4D
# (time-invariant, diagonal) ablation. Induction heads (Table 2 / Table 11): Mamba is 100% at every test length
# 2^6 .. 2^20.
PAPER_SELECTIVE_COPY = {("no-gate", "S4D"): 18.3, ("no-gate", "S6"): 97.0, ("mamba", "S4D"): 56.4,
                        ("mamba", "S6"): 99.8}
PAPER_ROWS_NOT_EXPRESSED = "H3 + S4 57.0, H3 + Hyena 30.1, H3 + S6 99.7, Mamba + Hyena 28.4"
PAPER_INDUCTION_ACCURACY = 100.0

#: The table's runs in the order they are trained (most important first, so a time limit cuts the least
#: important), each with its share weight of the remaining time under ``--max-minutes``.
TABLE_RUNS = (("selective-copy", "mamba", "S6", 4.0), ("induction-heads", "mamba", "S6", 2.0),
              ("selective-copy", "mamba", "S4D", 1.5), ("selective-copy", "no-gate", "S6", 1.5),
              ("selective-copy", "no-gate", "S4D", 1.0))


def status(m: dict | None) -> str:
    """A row's state in the table: done, stopped at the target, cut by the time limit, or not run."""
    if m is None:
        return "not run (time limit)"
    if m.get("stopped") == "target":
        return f"reached target at step {m['target_reached_at']}"
    if m.get("stopped") == "time":
        target = "" if m.get("target_accuracy") is None else f", target {m['target_accuracy']} not reached"
        return f"UNFINISHED: time limit at step {m['steps']} of {m['max_steps']}{target}"
    if not m.get("finished", True):
        return "UNFINISHED: time limit during evaluation"
    return "done"


def run_name(task: str, arch: str, layer: str) -> str:
    """The folder of one table row's run under --runs, e.g. selective_copy_mamba_S6."""
    return f"{task.replace('-', '_')}_{arch}_{layer}"


def _earlier_run(run: Path, preset: str) -> dict | None:
    """metrics.json of a run trained earlier with ``preset`` (checked against its config.yaml), else None."""
    metrics, config = run / "metrics.json", run / "config.yaml"
    if not (metrics.is_file() and config.is_file()):
        return None
    import yaml

    try:
        settings = yaml.safe_load(config.read_text())
        m = json.loads(metrics.read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise UserError(f"{run}: cannot read the earlier run ({e})") from None
    wanted = asdict(PRESETS[preset][m.get("task", "")]) if m.get("task") in TASKS else None
    ran = (settings or {}).get("preset") or {}
    if wanted is None or {k: ran.get(k) for k in ("data", "batch_size", "model")} != {
            k: _yaml_plain(wanted[k]) for k in ("data", "batch_size", "model")}:
        raise UserError(f"{run}: was trained with other settings than the {preset} preset; move it away or drop "
                        "--reuse")
    return m


def _yaml_plain(value):
    """A preset value as it reads back from config.yaml (tuples become lists)."""
    if isinstance(value, dict):
        return {k: _yaml_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_plain(v) for v in value]
    return value


def run_table(out: Path, runs: Path, preset: str = "tiny", max_steps: int | None = None,
              max_minutes: float | None = None, reuse: bool = False, seed: int = 0, device: str = "auto",
              log: Callable[[str], None] | None = None, overwrite: bool = False) -> tuple[dict, str, list[Path]]:
    """Train the table's runs (:data:`TABLE_RUNS`, each in ``runs/<run_name>``) and write the report.

    Selective copying for {Mamba block, no gate} x {S6, S4D}; induction heads for Mamba S6 at 2^k lengths.
    ``max_minutes``: a wall-clock limit for all runs, each getting its weight's share of the time left (most
    important first); rows it cuts are marked. ``reuse``: take a row from ``runs/<row>/metrics.json`` when that run
    was trained earlier with ``preset`` (a UserError when it was trained with other settings).
    Writes the report folder ``out`` (``files.output_folder``: a new folder, or with ``overwrite`` an earlier
    report of ours; checked before any training): ``synthetic_<preset>.{json,md}`` (and ``.png``, the induction
    curve, when a length was tested); returns ``(report, markdown, written paths)``. In ``runs`` only the row
    folders it trains are written (each a new folder or a run of ours that never reached a checkpoint).
    """
    from mamba_bio_audio.benchmarks.report import environment, write_report
    from mamba_bio_audio.devices import torch_device

    log = log or log_to_stderr
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    torch_device(device)  # fail early on a missing GPU
    check_output_folder(out, "synthetic table", overwrite=overwrite, inputs=(runs,))
    done: dict[tuple[str, str, str], dict | None] = {}
    reused = {(task, arch, layer): m for task, arch, layer, _ in TABLE_RUNS
              if reuse and (m := _earlier_run(runs / run_name(task, arch, layer), preset)) is not None}
    for task, arch, layer in reused:
        log(f"{task} {arch} {layer}: reused {runs / run_name(task, arch, layer)}/metrics.json")
    done.update(reused)
    to_train = [row for row in TABLE_RUNS if tuple(row[:3]) not in reused]
    for task, arch, layer, _ in to_train:  # before any training: never train over a run or someone's files
        row = runs / run_name(task, arch, layer)
        if (row / "checkpoints" / "last.ckpt").is_file():
            raise UserError(f"--runs {runs}: {row.name} already holds a trained run; pass --reuse to take its row, "
                            f"or choose another --runs folder")
        check_output_folder(row, f"synthetic {task}", overwrite=True, flag="--runs")
    for k, (task, arch, layer, _) in enumerate(to_train):
        budget = None
        if deadline is not None:
            left = deadline - time.monotonic()
            weights = [w for *_, w in to_train[k:]]
            budget = left * weights[0] / sum(weights)
            if budget < 1.0:
                log(f"{task} {arch} {layer}: not run (time limit)")
                done[task, arch, layer] = None
                continue
        log(f"{task}: {arch} {layer} ..." + (f" (budget {budget:.0f} s)" if budget else ""))
        m = run_task(task, choose_preset(preset, task, max_steps), layer, arch, runs / run_name(task, arch, layer),
                     device, seed, progress=False, time_budget_s=budget, log=log)
        log(f"  accuracy {m['accuracy']:.4f} after {m['steps']} steps{stop_note(m)}, "
            f"{m['train_seconds']:.0f} s training, {m['eval_seconds']:.0f} s evaluation")
        done[task, arch, layer] = m

    rows = []
    for arch in ARCHS:
        for layer in ("S4D", "S6"):
            m = done.get(("selective-copy", arch, layer))
            rows.append({"arch": arch, "layer": layer, "accuracy": None if m is None else m["accuracy"],
                         "steps": None if m is None else m["steps"],
                         "max_steps": choose_preset(preset, "selective-copy", max_steps).max_steps,
                         "train_seconds": None if m is None else m["train_seconds"], "status": status(m),
                         "curriculum_starts": None if m is None else m["curriculum_starts"],
                         "paper_accuracy": PAPER_SELECTIVE_COPY[arch, layer]})
    induction = done.get(("induction-heads", "mamba", "S6"))
    ih_preset = choose_preset(preset, "induction-heads", max_steps)
    lengths = induction["lengths"] if induction else [
        {"seqlen": 2**k, "accuracy": None, "skipped": "not run (time limit)"} for k in ih_preset.test_log2_lengths]
    report = {"preset": preset, "seed": seed, "environment": environment(), "runs": str(runs),
              "paper_source": PAPER_SOURCE, "max_minutes": max_minutes,
              "settings": {t: asdict(choose_preset(preset, t, max_steps)) for t in TASKS},
              "selective_copying": rows,
              "induction_heads": {"arch": "mamba", "layer": "S6", "train_seqlen": ih_preset.data["seqlen"],
                                  "accuracy": None if induction is None else induction["accuracy"],
                                  "steps": None if induction is None else induction["steps"]
                                  + induction.get("prior_steps", 0),
                                  "history": None if induction is None else induction.get("history"),
                                  "max_steps": ih_preset.max_steps,
                                  "train_seconds": None if induction is None else induction["train_seconds"],
                                  "status": status(induction), "lengths": lengths,
                                  "paper_accuracy_every_length": PAPER_INDUCTION_ACCURACY}}
    name = f"synthetic_{preset}"
    tested = [r for r in lengths if r["accuracy"] is not None]
    md = table_markdown(report, preset)
    with output_folder(out, "synthetic table", overwrite=overwrite, inputs=(runs,)) as tmp:
        write_report(tmp, name, report, md)
        if tested:
            plot_curve(tmp / f"{name}.png", [math.log2(r["seqlen"]) for r in tested],
                       [100 * r["accuracy"] for r in tested], "log2(test sequence length)", "accuracy (%)",
                       f"Induction heads, Mamba S6 trained at {ih_preset.data['seqlen']} ({preset} preset)",
                       ylim=(0, 103), marker="o", reference=(PAPER_INDUCTION_ACCURACY, "paper (Mamba)"),
                       vline=(math.log2(ih_preset.data["seqlen"]), "training length"))
    return report, md, [out / f"{name}.json", out / f"{name}.md", *([out / f"{name}.png"] if tested else [])]


# ---- the table's markdown -----------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _stop_rule(settings: dict) -> str:
    target = settings.get("target_accuracy")
    return "" if target is None else f"; stopped once validation accuracy >= {target}"


def _val_length(settings: dict) -> str:
    n = settings.get("val_seqlen")
    return "" if n is None or n == settings["data"]["seqlen"] else f" (validated at length {n})"


def _steps_text(row: dict) -> str:
    """'600 steps', or for a run continued from earlier ones '15751 steps at lr 0.003, then 9000 at lr 0.001'."""
    if row.get("steps") is None:
        return "— steps"
    history = row.get("history") or []
    if len(history) < 2:
        return f"{row['steps']} steps" + (_schedule_text(history[0]) if history else "")
    parts = [f"{h['steps']} steps at lr {h['lr']}{_schedule_text(h)}" if i == 0
             else f"{h['steps']} at lr {h['lr']}{_schedule_text(h)}" for i, h in enumerate(history)]
    return f"{row['steps']} steps in {len(history)} runs, each continuing the last ({', then '.join(parts)})"


def _schedule_text(entry: dict) -> str:
    """' (cosine to 0.01x over 15000 steps)' for a history entry with a decaying lr, else ''."""
    notes = []
    if entry.get("min_lr_ratio") is not None and entry["min_lr_ratio"] < 1:
        notes.append(f"cosine to {entry['min_lr_ratio']:g}x over {entry['schedule_steps']} steps")
    if entry.get("selected_step") is not None:
        notes.append(f"weights of step {entry['selected_step']} kept, the best validation")
    return f" ({'; '.join(notes)})" if notes else ""


def table_markdown(report: dict, preset: str) -> str:
    """The markdown report of :func:`run_table`."""
    from mamba_bio_audio.benchmarks.report import markdown_table

    env = report["environment"]
    s = report["settings"]
    sc, ih = s["selective-copy"], s["induction-heads"]
    copy_rows = [[{"mamba": "Mamba block", "no-gate": "No gate"}[r["arch"]], r["layer"], _pct(r["accuracy"]),
                  f"{r['paper_accuracy']:.1f}", "—" if r["steps"] is None else r["steps"],
                  ", ".join(f"{n}@{start}" for n, start in r.get("curriculum_starts") or []) or "—",
                  "—" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}", r["status"]]
                 for r in report["selective_copying"]]
    ind = report["induction_heads"]
    ind_rows = [[r["seqlen"], f"2^{int(math.log2(r['seqlen']))}", _pct(r["accuracy"]), r["skipped"] or ""]
                for r in ind["lengths"]]
    curriculum = ""
    if sc.get("curriculum"):
        stages = ", ".join(f"{n} (at most {cap} steps)" for n, cap in sc["curriculum"])
        early = f", each left early at training accuracy >= {sc['advance_at']}" if sc.get("advance_at") else ""
        curriculum = f"; trained at {stages}{early}, then {sc['data']['seqlen']}"
    ours = (" The gpu-fast preset is ours, not the paper's: same tasks, models and test lengths, shorter training "
            "(larger batches, higher learning rate, curriculum, early stop)." if preset == "gpu-fast" else "")
    limit = (f" Run under a {report['max_minutes']:g}-minute limit; rows marked UNFINISHED or not run were cut "
             "by it." if report.get("max_minutes") else "")
    return "\n".join([
        f"# Synthetic tasks ({preset} preset)", "",
        f"{env['device']}, torch {env['torch']}, triton {env['triton']}, mamba_bio_audio {env['mamba_bio_audio']}, "
        f"{env['date']}. Models: 2 layers, d_model {sc['model']['d_model']}, d_state {sc['model']['d_state']}; "
        f"seed {report['seed']}. Paper: {report.get('paper_source', PAPER_SOURCE)}.{ours}{limit}", "",
        f"## Selective copying (length {sc['data']['seqlen']}, {sc['data']['n_memorize']} tokens to copy, "
        f"{sc['data']['n_data_tokens']} data tokens; batch {sc['batch_size']}, lr {sc['lr']}{curriculum}"
        f"{_stop_rule(sc)})", "",
        markdown_table(["architecture", "layer", "accuracy % (ours)", "accuracy % (paper, Table 1)", "steps",
                        "train length@from step", "train s", "status"], copy_rows), "",
        "Accuracy: held-out sequences at the full length, every answer position scored. The paper's S4 rows are "
        "compared with our S4D (time-invariant, diagonal). Paper rows our layers do not express: "
        f"{PAPER_ROWS_NOT_EXPRESSED}. The paper trained 400K steps at length 4096, batch 64, lr 1e-4.", "",
        f"## Induction heads (Mamba block, S6; trained at {ind['train_seqlen']}, batch {ih['batch_size']}, "
        f"lr {ih['lr']}{_stop_rule(ih)}{_val_length(ih)}; {_steps_text(ind)}, {ind['status']}; "
        f"{ih['eval_samples']} test sequences per length)", "",
        markdown_table(["test length", "log2", "accuracy % (ours)", "note"], ind_rows), "",
        f"The paper reports {PAPER_INDUCTION_ACCURACY:.0f}% for Mamba at every length from 2^6 to 2^20 (trained at "
        "256 for 204,800 steps, batch 8). Lengths above 2^16 run in 2^16-token segments with the recurrent state "
        "carried across; lengths that would not fit in memory, or that the time limit cut, are listed as skipped.",
    ])
