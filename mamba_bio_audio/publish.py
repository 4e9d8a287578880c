"""Publishing a model on the Hugging Face Hub: config.json, safetensors weights and a generated README.md model
card (the run's training config and metrics when it has them), staged in a temporary folder and uploaded by
:func:`mamba_bio_audio.hub.upload_folder`.

:func:`push_folder` pushes a run folder (``RUN/model`` beside ``RUN/config.yaml`` and ``RUN/metrics.json``) or a
model folder as it is saved, without loading it (any of our models) or, with ``layout="transformers"``, a MambaLM
re-saved in transformers' ``MambaForCausalLM`` layout. :func:`push_model` pushes a model in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mamba_bio_audio.checkpoint import (
    CONFIG_NAME,
    SAFETENSORS_INDEX,
    SAFETENSORS_NAME,
    read_config_dict,
    shard_files,
)
from mamba_bio_audio.errors import CheckpointError, UserError
from mamba_bio_audio.hub import check_repo_id, upload_folder

CARD_NAME = "README.md"
RUN_CONFIG = "config.yaml"
RUN_METRICS = "metrics.json"
MODEL_FOLDER = "model"

# what to run with a pushed model, by the kind of run that trained it (the run folder's marker)
USES = {
    "dna pretrain": ["mba species train --data STORE --out RUN --init-from {repo}",
                     "mba dna classify train --data STORE --out RUN --init-from {repo}"],
    "species train": ["mba species evaluate --checkpoint {repo} --data STORE --out EVAL",
                      "mba species predict --checkpoint {repo} ..."],
    "dna classify train": ["mba dna classify evaluate --checkpoint {repo} --data STORE --out EVAL",
                           "mba dna classify predict --checkpoint {repo} ..."],
    "sc09 train": ["mba sc09 generate --checkpoint {repo} --out SAMPLES"],
}


def find_model(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(model folder, run folder)`` of a run folder (its ``model/``) or of a model folder (the run folder is its
    parent when that holds the run's config.yaml or metrics.json, else the model folder itself)."""
    path = Path(path)
    if (path / MODEL_FOLDER / CONFIG_NAME).is_file():
        return path / MODEL_FOLDER, path
    if (path / CONFIG_NAME).is_file():
        parent = path.parent
        ran_here = path.name == MODEL_FOLDER and any((parent / n).is_file() for n in (RUN_CONFIG, RUN_METRICS))
        return path, parent if ran_here else path
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or model folder")
    raise CheckpointError(f"{path}: not a run folder (no {MODEL_FOLDER}/{CONFIG_NAME}) nor a model folder "
                          f"(no {CONFIG_NAME})")


def push_folder(path: str | os.PathLike, repo_id: str, *, layout: str = "mamba_ssm", private: bool | None = None,
                revision: str | None = None, commit_message: str | None = None) -> str:
    """Push the model of a run or model folder to ``repo_id``; returns the commit URL."""
    from mamba_bio_audio.models.hf_layout import LAYOUTS

    if layout not in LAYOUTS:
        raise UserError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    check_repo_id(repo_id)
    model_folder, run_folder = find_model(path)
    with tempfile.TemporaryDirectory(prefix="mba-push-") as tmp:
        stage = Path(tmp) / "model"
        if layout == "transformers":
            from mamba_bio_audio.models.lm import MambaLM

            if "classifier" in read_config_dict(model_folder).get("extra", {}):
                raise UserError(f"{path}: a classifier has no transformers MambaForCausalLM layout; push it with "
                                f"the mamba_ssm layout")
            MambaLM.from_pretrained(model_folder).save_pretrained(stage, layout="transformers")
        else:
            _copy_saved(model_folder, stage)
        write_card(stage, repo_id, layout, run_folder)
        return upload_folder(stage, repo_id, private=private, revision=revision, commit_message=commit_message)


def push_model(model, repo_id: str, *, layout: str = "mamba_ssm", private: bool | None = None,
               revision: str | None = None, commit_message: str | None = None,
               run_folder: str | os.PathLike | None = None) -> str:
    """Push a model in memory (``model.save_pretrained(layout=...)`` plus a card); returns the commit URL."""
    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="mba-push-") as tmp:
        stage = model.save_pretrained(Path(tmp) / "model", layout=layout)
        write_card(stage, repo_id, layout, None if run_folder is None else Path(run_folder))
        return upload_folder(stage, repo_id, private=private, revision=revision, commit_message=commit_message)


def _copy_saved(model_folder: Path, stage: Path) -> None:
    """config.json and the safetensors weights (one file, or the shards its index names) into ``stage``."""
    names = [CONFIG_NAME]
    if (model_folder / SAFETENSORS_NAME).is_file():
        names.append(SAFETENSORS_NAME)
    elif (model_folder / SAFETENSORS_INDEX).is_file():
        names += [SAFETENSORS_INDEX, *(p.name for p in shard_files(model_folder / SAFETENSORS_INDEX))]
    else:
        raise CheckpointError(f"{model_folder}: no {SAFETENSORS_NAME}; only safetensors weights are pushed (load "
                              f"the model and save_pretrained it first)")
    stage.mkdir(parents=True)
    for name in names:
        shutil.copyfile(model_folder / name, stage / name)


# ---- the model card -----------------------------------------------------------------------------------------------
def write_card(stage: Path, repo_id: str, layout: str, run_folder: Path | None) -> Path:
    """Write README.md into ``stage`` (which holds the config.json and weights being pushed)."""
    from mamba_bio_audio.files import output_kind

    run_config = metrics = kind = None
    if run_folder is not None:
        kind = output_kind(run_folder)
        if (run_folder / RUN_CONFIG).is_file():
            run_config = (run_folder / RUN_CONFIG).read_text()
        if (run_folder / RUN_METRICS).is_file():
            try:
                metrics = json.loads((run_folder / RUN_METRICS).read_text())
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise CheckpointError(f"{run_folder / RUN_METRICS}: not readable JSON ({e})") from None
    text = model_card(read_config_dict(stage), repo_id, layout, parameters=_count_parameters(stage), kind=kind,
                      run_config=run_config, metrics=metrics)
    (stage / CARD_NAME).write_text(text)
    return stage / CARD_NAME


def _count_parameters(stage: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in sorted(stage.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                shape = f.get_slice(name).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total


def _model_class(config: dict[str, Any], layout: str) -> str:
    if layout == "transformers":
        return "MambaLM"
    if config.get("architecture") == "sashimi":
        return "SashimiLM"
    if "classifier" in config.get("extra", {}):
        return "MambaClassifier"
    return "MambaLM" if "d_model" in config else ""


_IMPORTS = {"MambaLM": "from mamba_bio_audio import MambaLM",
            "MambaClassifier": "from mamba_bio_audio import MambaClassifier",
            "SashimiLM": "from mamba_bio_audio.models.sashimi import SashimiLM"}
_SHAPE_KEYS = {"mamba_ssm": ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "bidirectional"),
               "transformers": ("hidden_size", "num_hidden_layers", "vocab_size", "state_size", "conv_kernel",
                                "expand")}


def model_card(config: dict[str, Any], repo_id: str, layout: str, *, parameters: int, kind: str | None = None,
               run_config: str | None = None, metrics: dict | None = None) -> str:
    """README.md text: front matter, what the model is, how to load it, its shape, the run's config.yaml and its
    scalar metrics (top level, and one level down as ``group.name``)."""
    from mamba_bio_audio import __version__

    library = "transformers" if layout == "transformers" else "mamba_bio_audio"
    lines = ["---", f"library_name: {library}", "tags:", "- mamba", "- state-space-model", "- mamba_bio_audio"]
    if layout == "transformers":
        lines.append("pipeline_tag: text-generation")
    lines += ["---", "", f"# {repo_id.split('/')[-1]}", ""]
    trained = f", trained with `mba {kind}`" if kind else ""
    what = "transformers' `MambaForCausalLM` layout" if layout == "transformers" else "mamba_ssm's layout"
    lines += [f"A Mamba model saved by mamba_bio_audio {__version__} in {what}{trained}; "
              f"{parameters:,} parameters (safetensors).", "", "## Use", "", "```python"]
    cls = _model_class(config, layout)
    if cls:
        lines += [_IMPORTS[cls], "", f'model = {cls}.from_pretrained("{repo_id}")']
    if layout == "transformers":
        lines += ["", "from transformers import MambaForCausalLM", "",
                  f'model = MambaForCausalLM.from_pretrained("{repo_id}")']
    lines += ["```", ""]
    uses = [u.format(repo=repo_id) for u in USES.get(kind or "", [])]
    if uses:
        lines += ["```bash", *uses, "```", ""]
    shape = [(k, config[k]) for k in _SHAPE_KEYS[layout] if k in config]
    if shape:
        lines += ["## Model", "", "| " + " | ".join(k for k, _ in shape) + " |",
                  "|" + "---|" * len(shape), "| " + " | ".join(str(v) for _, v in shape) + " |", ""]
    if run_config:
        lines += ["## Training config", "", "```yaml", run_config.rstrip("\n"), "```", ""]
    rows = _scalar_metrics(metrics) if isinstance(metrics, dict) else []
    if rows:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_format(value)} |" for name, value in rows]
        lines.append("")
    return "\n".join(lines)


def _scalar_metrics(metrics: dict) -> list[tuple[str, Any]]:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", v) for k, v in value.items() if _is_scalar(v)]
        elif _is_scalar(value):
            rows.append((str(key), value))
    return rows


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")
