"""Hugging Face Hub ids wherever a checkpoint is taken, and uploads of our models.

``resolve("org/name@revision")`` downloads the model files through ``huggingface_hub.snapshot_download`` (its
cache, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, the token of ``HF_TOKEN`` or ``hf auth login``) and returns the
snapshot folder; a local path that exists is returned as it is, so a local folder always wins over a Hub id of
the same spelling. Only ``config.json`` and the weights are fetched: ``model*.safetensors`` (one file or shards
with ``model.safetensors.index.json``), or, for a repository without safetensors (mamba_ssm's
``state-spaces/mamba-*``, ``kuleshov-group/PlantCaduceus_*``), ``pytorch_model*.bin``, which
:func:`mamba_bio_audio.checkpoint.read_state_dict` reads with ``torch.load(weights_only=True)`` only: tensors, never
arbitrary pickled objects. For a Caduceus model (``model_type`` "caduceus") its ``tokenizer.json`` too, when the
repository has one: the token names by which another vocabulary (PlantCaduceus') is mapped to our DNA tokenizer's.

Every failure (no network, offline and not cached, no such repository or revision, no token for a private or
gated one) is one :class:`~mamba_bio_audio.errors.CheckpointError` line. ``huggingface_hub`` is imported only
when a Hub id is used (``pip install 'mamba-bio-audio[hub]'``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mamba_bio_audio.errors import CheckpointError, UserError

HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^\s@]+))?")
"""``org/name`` or ``org/name@revision`` (a branch, tag or commit hash)."""

WEIGHT_PATTERNS = ["model*.safetensors", "model.safetensors.index.json"]
PICKLE_PATTERNS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
TOKENIZER_PATTERNS = ["tokenizer.json"]
INSTALL_HINT = "pip install 'mamba-bio-audio[hub]'"


def parse_hub_id(text: str | os.PathLike) -> tuple[str, str | None] | None:
    """``(repo_id, revision or None)`` when ``text`` is spelled as a Hub id, else None."""
    match = HUB_ID.fullmatch(str(text))
    return (match["repo"], match["revision"]) if match else None


def resolve(source: str | os.PathLike) -> Path:
    """The local folder of ``source``: itself when it exists or is not spelled as a Hub id, else the Hub snapshot
    (downloaded or taken from the cache)."""
    path = Path(source)
    parsed = None if path.exists() else parse_hub_id(source)
    if parsed is None:
        return path
    return download(*parsed, source=str(source))


def offline() -> bool:
    """``HF_HUB_OFFLINE`` set to a true value (read at each call, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        return None
    return huggingface_hub


def download(repo_id: str, revision: str | None = None, source: str | None = None) -> Path:
    """The snapshot folder of a Hub model: config.json plus its safetensors weights, or its
    ``pytorch_model*.bin`` when it has no safetensors. One-line CheckpointError on any failure."""
    source = source or (repo_id if revision is None else f"{repo_id}@{revision}")
    hub = _hub()
    if hub is None:
        raise CheckpointError(f"{source}: no such local folder (Hugging Face Hub ids need huggingface_hub: "
                              f"{INSTALL_HINT})")

    def fetch(patterns: list[str]) -> Path:
        try:
            return Path(hub.snapshot_download(repo_id, revision=revision, allow_patterns=["config.json", *patterns],
                                              cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                                              local_files_only=offline()))
        except Exception as e:  # noqa: BLE001 - every failure of the Hub client is reported in one line
            raise hub_error(source, e) from None

    weights = WEIGHT_PATTERNS
    folder = fetch(weights)
    if not any(folder.glob("model*.safetensors")):
        weights = PICKLE_PATTERNS
        folder = fetch(weights)
    if _is_caduceus(folder):
        try:  # the token names of its vocabulary; without them a vocabulary other than ours is refused on use
            folder = fetch([*weights, *TOKENIZER_PATTERNS])
        except CheckpointError:
            pass
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{source}: the Hub repository has no config.json (not a model checkpoint)")
    if not any(folder.glob("model*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise CheckpointError(f"{source}: the Hub repository has no model*.safetensors or pytorch_model*.bin weights")
    return folder


def _is_caduceus(folder: Path) -> bool:
    """Whether ``folder``'s config.json is a Caduceus model's (False when it is missing or unreadable)."""
    import json

    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") == "caduceus"


def _kinds(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def hub_error(source: str, error: BaseException) -> CheckpointError:
    """One line for a failure of the Hub client (class names, so that any huggingface_hub version maps)."""
    kinds = _kinds(error)
    if "RevisionNotFoundError" in kinds:
        return CheckpointError(f"{source}: the Hub repository has no such revision")
    if kinds & {"RepositoryNotFoundError", "GatedRepoError"}:
        return CheckpointError(f"{source}: no such local folder, and no such model on the Hugging Face Hub (or it "
                               f"is private or gated: set HF_TOKEN to a token that may read it)")
    if "HFValidationError" in kinds:
        return CheckpointError(f"{source}: no such local folder, and not a valid Hugging Face Hub id")
    if offline() and kinds & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "IncompleteSnapshotError"}:
        return CheckpointError(f"{source}: no such local folder, and HF_HUB_OFFLINE is set but the model is not "
                               f"(completely) in the Hugging Face cache; download it once with network access")
    cause = error.__cause__ or error.__context__
    detail = f"{type(cause).__name__}: {cause}" if cause is not None else f"{type(error).__name__}: {error}"
    detail = " ".join(detail.split())[:200]
    return CheckpointError(f"{source}: no such local folder, and the Hugging Face Hub download failed ({detail})")


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` when it is spelled ``org/name`` (no revision), else a one-line UserError."""
    if parse_hub_id(repo_id) is None or "@" in repo_id:
        raise UserError(f"{repo_id}: not a Hub repository id (expected org/name)")
    return repo_id


def upload_folder(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None,
                  revision: str | None = None, commit_message: str | None = None) -> str:
    """Create ``repo_id`` (a model repository; kept if it exists) and upload every file of ``folder`` to it (on
    branch ``revision``, default main); returns the commit URL. One-line UserError on any failure."""
    hub = _hub()
    if hub is None:
        raise UserError(f"pushing to the Hugging Face Hub needs huggingface_hub: {INSTALL_HINT}")
    check_repo_id(repo_id)
    if offline():
        raise UserError(f"{repo_id}: HF_HUB_OFFLINE is set; pushing needs the network")
    try:
        api = hub.HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 commit_message=commit_message or "Upload model")
    except Exception as e:  # noqa: BLE001 - every failure of the Hub client is reported in one line
        detail = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        hint = " (set HF_TOKEN to a token with write access)" if _kinds(e) & {"LocalTokenNotFoundError"} or \
            "401" in detail or "403" in detail else ""
        raise UserError(f"{repo_id}: push to the Hugging Face Hub failed ({detail}){hint}") from None
    return str(getattr(info, "commit_url", info))
