"""AdamW (fused on CUDA where it can be), its parameter groups (no decay on norms, biases, A_log, D, embeddings'
padding) and the cosine schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Parameters trained without weight decay: vectors (norm weights, biases, D), and those marked
    ``_no_weight_decay`` (A_log, D, the S4D dt_bias) as in mamba_ssm."""
    return getattr(param, "_no_weight_decay", False) or param.ndim < 2 or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices and everything in :func:`no_decay`. Tied weights appear once."""
    decay, plain = [], []
    for name, p in model.named_parameters():  # named_parameters skips duplicates (tied embeddings)
        if not p.requires_grad:
            continue
        (plain if no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def can_fuse_adamw(params, *, fp16_scaled: bool = False, sharded: bool = False) -> bool:
    """Whether ``torch.optim.AdamW(..., fused=True)`` suits ``params`` (tensors or AdamW parameter groups): every
    parameter a floating-point CUDA tensor, and neither ``fp16_scaled`` (float16 mixed precision with a gradient
    scaler: Lightning refuses to clip gradients for an optimizer that unscales them itself) nor ``sharded``
    (FSDP's flat parameters, where the foreach path is the tested one). The fused step is one kernel per
    parameter group and dtype instead of about ten foreach kernels, with the same update in fp32."""
    if fp16_scaled or sharded:
        return False
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    return bool(tensors) and all(p.is_cuda and p.is_floating_point() for p in tensors)


def adamw(params, *, fp16_scaled: bool = False, sharded: bool = False, **options) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **options)``, fused where :func:`can_fuse_adamw` says it can be (the
    recipes' and ``mba bench train``'s optimizer: both models of a bench get the same one)."""
    params = list(params)
    return torch.optim.AdamW(params, fused=can_fuse_adamw(params, fp16_scaled=fp16_scaled, sharded=sharded) or None,
                             **options)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                       min_lr_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` x the peak at ``total_steps``."""
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(warmup_steps + 1, int(total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
