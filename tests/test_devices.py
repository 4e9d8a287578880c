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
