"""The ``--device`` flag of every command: ``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` -> a torch device."""

from __future__ import annotations

import os

import torch

from mamba_bio_audio.errors import UserError


def torch_device(name: str | None = "auto") -> torch.device:
    """``"auto"`` or None (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    A CUDA device asked for but missing, an index beyond the GPU count, or any other name is a one-line UserError.
    """
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available here")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"--device {name}: expected cuda or cuda:N") from None
        if device.type != "cuda":
            raise UserError(f"--device {name}: expected cuda or cuda:N")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPUs here")
        return device
    raise UserError(f"--device {name}: expected auto, cpu, cuda or cuda:N")


def process_device(name: str | None = "auto") -> torch.device:
    """:func:`torch_device`, but for work a process does on its own before training starts (a probe, a step-time
    probe): in a multi-device run each process's GPU is ``cuda:LOCAL_RANK`` (set by Lightning's launcher and
    torchrun), not GPU 0 for every process. Unchanged for the CPU, a named ``cuda:N`` and single-process runs."""
    device = torch_device(name)
    local_rank = os.environ.get("LOCAL_RANK")
    if device.type == "cuda" and device.index is None and local_rank is not None:
        index = int(local_rank)
        if index < torch.cuda.device_count():
            return torch.device("cuda", index)
    return device
