"""The one --device parser: names to torch devices, one-line UserErrors for the rest."""

import pytest
import torch

from mamba_bio_audio.devices import torch_device
from mamba_bio_audio.errors import UserError


def test_auto_and_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert torch_device("auto").type == expected and torch_device(None).type == expected
    assert torch_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "gpu0", "mps"])
def test_unknown_names_are_one_line_errors(name):
    with pytest.raises(UserError, match="expected auto, cpu, cuda or cuda:N"):
        torch_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_missing_gpu_is_a_user_error():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match="no CUDA GPU is available here"):
            torch_device(name)


@pytest.mark.gpu
def test_cuda_indices_are_checked():
    assert torch_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UserError, match="GPUs here"):
        torch_device(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(UserError, match="expected cuda or cuda:N"):
        torch_device("cuda:x")


def test_lightning_devices_come_from_the_same_parser(monkeypatch):
    """training.trainer.resolve_device wraps torch_device: the same names, the same one-line errors."""
    from mamba_bio_audio.training.trainer import resolve_device

    assert resolve_device("cpu") == ("cpu", 1)
    for name in ("tpu", "cuda:x" if torch.cuda.is_available() else "cuda"):
        with pytest.raises(UserError) as info:
            resolve_device(name)
        with pytest.raises(UserError) as expected:
            torch_device(name)
        assert str(info.value) == str(expected.value) and "\n" not in str(info.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a pretend 2-GPU host: names only, no CUDA work
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == ("gpu", "auto")
    assert resolve_device("cuda") == ("gpu", "auto")
    assert resolve_device("cuda:1") == ("gpu", [1])
    with pytest.raises(UserError, match="only 2 GPUs here"):
        resolve_device("cuda:2")


def test_process_device_is_the_local_rank_gpu(monkeypatch):
    """Work a process does before training (the species probe) runs on its own GPU in a multi-device run, not on
    GPU 0 for every process."""
    import torch

    from mamba_bio_audio.devices import process_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert process_device("cuda") == torch.device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_device("cuda") == torch.device("cuda", 1)
    assert process_device("auto") == torch.device("cuda", 1)
    assert process_device("cuda:0") == torch.device("cuda", 0)  # a named GPU stays named
    assert process_device("cpu") == torch.device("cpu")
