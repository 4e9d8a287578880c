"""Hugging Face Hub ids wherever a checkpoint is taken, served offline from a Hub cache the tests populate
(``HF_HUB_CACHE`` + ``HF_HUB_OFFLINE=1``, the cache's own layout): our layout, transformers' layout, a
mamba_ssm-style ``pytorch_model.bin`` repository read weights-only, revisions, a local folder winning over a Hub id,
and one-line errors (not cached offline, unreachable Hub, pickled objects, no huggingface_hub)."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from mamba_bio_audio import MambaConfig, MambaLM, hub
from mamba_bio_audio.errors import CheckpointError

from helpers import assert_one_line_error
from helpers import run_cli as run

pytest.importorskip("huggingface_hub")
pytestmark = pytest.mark.usefixtures("one_thread")

DNA = {"d_model": 16, "n_layer": 2, "vocab_size": 12, "d_state": 4}


def add_to_cache(cache: Path, repo_id: str, files: Path, revision: str = "main") -> Path:
    """Lay ``files`` (a folder) out as huggingface_hub caches a download: blobs named by their hash, a snapshot
    folder of links to them named by the commit, and ``refs/REVISION`` holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for path in sorted(files.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hub cache, offline: nothing here may reach the network."""
    folder = tmp_path / "hf-cache"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # relative org/name paths must not exist locally
    return folder


def _model(seed=0, **config) -> MambaLM:
    torch.manual_seed(seed)
    model = MambaLM(MambaConfig(**{**DNA, **config})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


IDS = torch.randint(0, 12, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("layout", ["mamba_ssm", "transformers"])
def test_hub_id_loads_from_the_cache_offline(cache, tmp_path, layout):
    model = _model()
    add_to_cache(cache, "org/dna-lm", model.save_pretrained(tmp_path / "saved", layout=layout))
    loaded = MambaLM.from_pretrained("org/dna-lm")
    assert torch.equal(loaded(IDS), model(IDS))


def test_revision_selects_the_ref(cache, tmp_path):
    main, tagged = _model(0), _model(1)
    add_to_cache(cache, "org/lm", main.save_pretrained(tmp_path / "a"))
    add_to_cache(cache, "org/lm", tagged.save_pretrained(tmp_path / "b"), revision="v1")
    assert torch.equal(MambaLM.from_pretrained("org/lm@v1")(IDS), tagged(IDS))
    assert torch.equal(MambaLM.from_pretrained("org/lm")(IDS), main(IDS))
    with pytest.raises(CheckpointError, match="org/lm@v2: no such local folder, and HF_HUB_OFFLINE is set"):
        MambaLM.from_pretrained("org/lm@v2")


def test_a_local_folder_wins_over_the_hub_id(cache, tmp_path):
    hub_model, local_model = _model(0), _model(1)
    add_to_cache(cache, "org/lm", hub_model.save_pretrained(tmp_path / "a"))
    local_model.save_pretrained(tmp_path / "org" / "lm")  # cwd is tmp_path: ./org/lm exists
    assert torch.equal(MambaLM.from_pretrained("org/lm")(IDS), local_model(IDS))
    assert hub.resolve("org/lm") == Path("org/lm")


def test_mamba_ssm_pickle_repository_is_read_weights_only(cache, tmp_path):
    """state-spaces/mamba-* ship config.json + pytorch_model.bin (no safetensors): fetched only then, and read with
    torch.load(weights_only=True)."""
    model = _model()
    folder = tmp_path / "mamba-ssm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"d_model": 16, "n_layer": 2, "vocab_size": 12,
                                                    "ssm_cfg": {"d_state": 4}, "fused_add_norm": True}))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    add_to_cache(cache, "state-spaces/tiny", folder)
    assert torch.equal(MambaLM.from_pretrained("state-spaces/tiny")(IDS), model(IDS))


class Payload:
    """Any object a pickle may carry; weights-only loading refuses it."""

    def __reduce__(self):
        return (print, ("unpickled",))


def test_a_pickle_with_objects_is_refused_in_one_line(cache, tmp_path, capsys):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(DNA))
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"backbone.embedding.weight": Payload()}, f)
    add_to_cache(cache, "org/evil", folder)
    with pytest.raises(CheckpointError, match="not a loadable weights-only torch file") as info:
        MambaLM.from_pretrained("org/evil")
    assert "\n" not in str(info.value)
    assert "unpickled" not in capsys.readouterr().out


def test_a_repository_without_weights_or_config(cache, tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(DNA))
    add_to_cache(cache, "org/bare", folder)
    with pytest.raises(CheckpointError, match="org/bare: the Hub repository has no model"):
        MambaLM.from_pretrained("org/bare")
    (folder / "config.json").unlink()
    (folder / "notes.txt").write_text("hi")
    add_to_cache(cache, "org/notes", folder)
    with pytest.raises(CheckpointError, match="org/notes: the Hub repository has no config.json"):
        MambaLM.from_pretrained("org/notes")


def test_missing_repository_offline_is_one_line(cache):
    with pytest.raises(CheckpointError) as info:
        MambaLM.from_pretrained("org/never-downloaded")
    message = str(info.value)
    assert message.startswith("org/never-downloaded: no such local folder, and HF_HUB_OFFLINE is set")
    assert "\n" not in message


def test_unreachable_hub_is_one_line(cache, monkeypatch):
    """Online, but the endpoint refuses connections: one line naming the failure."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(CheckpointError) as info:
        hub.resolve("org/unreachable")
    message = str(info.value)
    assert message.startswith("org/unreachable: no such local folder, and the Hugging Face Hub download failed (")
    assert "\n" not in message


@pytest.mark.parametrize("name, fragment", [
    ("RepositoryNotFoundError", "no such model on the Hugging Face Hub (or it is private or gated: set HF_TOKEN"),
    ("GatedRepoError", "private or gated"),
    ("RevisionNotFoundError", "has no such revision"),
    ("HFValidationError", "not a valid Hugging Face Hub id"),
])
def test_hub_errors_map_to_one_line(name, fragment):
    error = type(name, (Exception,), {})("a\nlong\nmessage")
    message = str(hub.hub_error("org/x", error))
    assert message.startswith("org/x: ") and fragment in message and "\n" not in message


def test_without_huggingface_hub_the_hint_is_one_line(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub, "_hub", lambda: None)
    with pytest.raises(CheckpointError, match=r"org/x: no such local folder \(Hugging Face Hub ids need "
                                              r"huggingface_hub: pip install 'mamba-bio-audio\[hub\]'\)"):
        MambaLM.from_pretrained("org/x")


@pytest.mark.parametrize("text, parsed", [
    ("org/name", ("org/name", None)), ("org/name@v1.0", ("org/name", "v1.0")),
    ("state-spaces/mamba-130m-hf", ("state-spaces/mamba-130m-hf", None)),
    ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
    ("/abs/path", None), ("./org/name", None), ("a/b/c", None), ("name", None), ("org/", None), ("~/x", None),
])
def test_hub_id_spelling(text, parsed):
    assert hub.parse_hub_id(text) == parsed


def test_init_from_and_checkpoint_take_hub_ids(cache, tmp_path):
    """--init-from (species / classify build their model through tasks.windows.model_dir) and --checkpoint."""
    from mamba_bio_audio.tasks.species import build_classifier, load_classifier

    pretrained = _model()
    add_to_cache(cache, "org/dna-lm", pretrained.save_pretrained(tmp_path / "lm", layout="transformers"))
    classifier = build_classifier(["a", "b"], 64, init_from="org/dna-lm", pooling="mean")
    assert torch.equal(classifier.backbone.embedding.weight[:12], pretrained.backbone.embedding.weight[:12])
    classifier.save_pretrained(tmp_path / "clf")
    add_to_cache(cache, "org/dna-clf", tmp_path / "clf")
    assert load_classifier("org/dna-clf").labels == ["a", "b"]


def test_cli_hub_failure_exits_2_in_one_line(cache, capsys):
    code, _, err = run(["species", "evaluate", "--checkpoint", "org/not-cached", "--data", "store", "--out", "ev"],
                       capsys)
    assert_one_line_error(code, err, "org/not-cached: no such local folder, and HF_HUB_OFFLINE is set")


def test_a_hub_config_error_names_the_hub_id(cache, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**DNA, "colour": "blue"}))
    MambaLM(MambaConfig(**DNA)).save_pretrained(tmp_path / "ok")
    shutil.copyfile(tmp_path / "ok" / "model.safetensors", folder / "model.safetensors")
    add_to_cache(cache, "org/bad", folder)
    with pytest.raises(CheckpointError, match=r"^org/bad \(config.json\): unknown MambaConfig fields: colour$"):
        MambaLM.from_pretrained("org/bad")
