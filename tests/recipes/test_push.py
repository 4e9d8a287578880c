"""``mba push`` and ``push_to_hub``: what is uploaded (config.json, safetensors, a README.md card with the run's
config and metrics), in either layout, through a stand-in for huggingface_hub's HfApi; one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mamba_bio_audio import MambaClassifier, MambaConfig, MambaLM
from mamba_bio_audio.files import MARKER
from mamba_bio_audio.publish import model_card

from helpers import assert_one_line_error
from helpers import run_cli as run

huggingface_hub = pytest.importorskip("huggingface_hub")

DNA = {"d_model": 16, "n_layer": 2, "vocab_size": 12, "d_state": 4}


class FakeApi:
    """Records create_repo / create_branch and the files upload_folder would send."""

    calls: list = []
    uploads: dict = {}

    def create_repo(self, repo_id, private=None, exist_ok=False):
        FakeApi.calls.append(("create_repo", repo_id, private, exist_ok))

    def create_branch(self, repo_id, branch, exist_ok=False):
        FakeApi.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
        FakeApi.calls.append(("upload_folder", repo_id, revision, commit_message))
        FakeApi.uploads = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        return type("CommitInfo", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()


@pytest.fixture
def api(monkeypatch):
    FakeApi.calls, FakeApi.uploads = [], {}
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


@pytest.fixture
def run_folder(tmp_path):
    """A 'dna pretrain' run as the recipe leaves it: model/, config.yaml, metrics.json and the marker."""
    torch.manual_seed(0)
    out = tmp_path / "pretrain"
    MambaLM(MambaConfig(**DNA)).save_pretrained(out / "model")
    (out / "config.yaml").write_text("preset: tiny\nlength: 64\nlr: 0.003\n")
    (out / "metrics.json").write_text(json.dumps({"steps": 40, "val": {"loss": 1.2345678, "bits_per_base": 1.78},
                                                  "species": ["a", "b"]}))
    (out / MARKER).write_text("dna pretrain\n")
    return out


def _uploaded_model(api, tmp_path, cls=MambaLM):
    folder = tmp_path / "uploaded"
    folder.mkdir()
    for name, data in api.uploads.items():
        (folder / name).write_bytes(data)
    return cls.from_pretrained(folder)


def test_push_a_run_folder(api, run_folder, tmp_path, capsys):
    code, out, err = run(["push", run_folder, "me/dna-lm", "--private", "--message", "first"], capsys)
    assert code == 0, err
    assert "https://hub.example/me/dna-lm/commit/1" in out
    assert api.calls == [("create_repo", "me/dna-lm", True, True), ("upload_folder", "me/dna-lm", None, "first")]
    assert sorted(api.uploads) == ["README.md", "config.json", "model.safetensors"]
    card = api.uploads["README.md"].decode()
    assert "library_name: mamba_bio_audio" in card and "trained with `mba dna pretrain`" in card
    assert "preset: tiny\nlength: 64" in card  # the run's config.yaml
    assert "| val.loss | 1.235 |" in card and "| steps | 40 |" in card
    assert "mba species train --data STORE --out RUN --init-from me/dna-lm" in card
    assert 'MambaLM.from_pretrained("me/dna-lm")' in card
    ids = torch.randint(0, 12, (1, 8))
    assert torch.equal(_uploaded_model(api, tmp_path)(ids), MambaLM.from_pretrained(run_folder / "model")(ids))


def test_push_the_model_folder_finds_the_run_and_the_branch(api, run_folder, capsys):
    code, _, err = run(["push", run_folder / "model", "me/dna-lm", "--revision", "v1"], capsys)
    assert code == 0, err
    assert ("create_branch", "me/dna-lm", "v1") in api.calls
    assert "bits_per_base" in api.uploads["README.md"].decode()


def test_push_in_the_transformers_layout(api, run_folder, tmp_path, capsys):
    code, _, err = run(["push", run_folder, "me/dna-lm-hf", "--layout", "transformers"], capsys)
    assert code == 0, err
    config = json.loads(api.uploads["config.json"])
    assert config["model_type"] == "mamba" and config["architectures"] == ["MambaForCausalLM"]
    card = api.uploads["README.md"].decode()
    assert "library_name: transformers" in card and 'MambaForCausalLM.from_pretrained("me/dna-lm-hf")' in card
    ids = torch.randint(0, 12, (1, 8))
    assert torch.equal(_uploaded_model(api, tmp_path)(ids), MambaLM.from_pretrained(run_folder / "model")(ids))


def test_push_to_hub_from_python(api, tmp_path):
    model = MambaClassifier(MambaConfig(**DNA), num_classes=3, labels=["x", "y", "z"])
    url = model.push_to_hub("me/clf")
    assert url.endswith("/commit/1")
    assert 'MambaClassifier.from_pretrained("me/clf")' in api.uploads["README.md"].decode()
    assert _uploaded_model(api, tmp_path, MambaClassifier).labels == ["x", "y", "z"]


@pytest.mark.parametrize("args, fragment", [
    (lambda f: ["push", f / "missing", "me/x"], "no such run or model folder"),
    (lambda f: ["push", f / "clf", "not a repo"], "not a Hub repository id"),
    (lambda f: ["push", f / "clf", "me/x@v1"], "not a Hub repository id"),
    (lambda f: ["push", f / "clf", "me/x", "--layout", "transformers"], "a classifier has no transformers"),
])
def test_push_refusals_are_one_line(api, tmp_path, capsys, args, fragment):
    MambaClassifier(MambaConfig(**DNA), num_classes=2).save_pretrained(tmp_path / "clf")
    code, _, err = run(args(tmp_path), capsys)
    assert_one_line_error(code, err, fragment)
    assert not api.uploads


def test_push_offline_and_failures_are_one_line(api, run_folder, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(["push", run_folder, "me/x"], capsys)
    assert_one_line_error(code, err, "HF_HUB_OFFLINE is set")
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def refuse(self, repo_id, **kwargs):
        raise RuntimeError("401 Client Error: Unauthorized\nfor url ...")

    monkeypatch.setattr(FakeApi, "create_repo", refuse)
    code, _, err = run(["push", run_folder, "me/x"], capsys)
    assert_one_line_error(code, err, "me/x: push to the Hugging Face Hub failed (RuntimeError: 401",
                          "set HF_TOKEN to a token with write access")


def test_card_without_a_run():
    card = model_card({"d_model": 8, "n_layer": 1, "vocab_size": 5}, "me/m", "mamba_ssm", parameters=1234)
    assert "1,234 parameters" in card and "## Training config" not in card and "## Metrics" not in card
    assert "| d_model | n_layer | vocab_size |" in card
