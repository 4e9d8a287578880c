"""Markdown table of a species A/B (``dev/gpu_session.sh species-ab``): one row per arm and evaluation.

    python3 dev/species_ab_table.py RUNS_DIR   # RUNS_DIR/<arm>/metrics.json, RUNS_DIR/<arm>-eval-<rc>/metrics.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(root: Path) -> None:
    rows, baseline = [], None
    for ev in sorted(root.glob("*-eval-*/metrics.json"), key=lambda p: p.stat().st_mtime):
        arm, rc = ev.parent.name.rsplit("-eval-", 1)
        result = json.loads(ev.read_text())
        train = json.loads((root / arm / "metrics.json").read_text())
        per = result["per_length"]
        if baseline is None and "baseline_accuracy" in per[0]:
            baseline = per
        rows.append((arm, rc, train, per))
    if not rows:
        print("no evaluations")
        return
    lengths = [r["length"] for r in rows[0][3]]
    print("| arm | test-time | " + " | ".join(f"{n:,}" for n in lengths) + " | train s | steps | stopped by | params |")
    print("|---|---|" + "---|" * len(lengths) + "---|---|---|---|")
    if baseline:
        print("| 6-mer LR baseline | | " + " | ".join(f"{r['baseline_accuracy']:.3f}" for r in baseline) + " | | | | |")
    for arm, rc, train, per in rows:
        acc = " | ".join(f"{r['accuracy']:.3f}" for r in per)
        print(f"| {arm} | {rc} | {acc} | {train.get('train_seconds')} | {train.get('steps')} | "
              f"{train.get('stopped_by', 'max_steps')} | {train.get('parameters')} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
