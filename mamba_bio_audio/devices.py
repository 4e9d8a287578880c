"""The ``--device`` flag of every command: ``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` -> a torch device."""

from __future__ import annotations

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
