"""A decoder-only Transformer baseline of the Mamba LM's size, for the training and generation benchmarks.

GPT-2 layout without dropout: token embedding -> n_layer x [x + attn(LN(x)); x + MLP(LN(x))] -> LN -> head tied to
the embedding. Attention is PyTorch's ``F.scaled_dot_product_attention`` (causal; flash / memory-efficient kernels
on the GPU), the MLP is Linear(d, 4d) -> GELU -> Linear(4d, d), every Linear has a bias.

Positions: none by default (``n_positions = 0``, "NoPE"): a causal decoder infers position from the mask itself,
and a learned table for the 65,536-token benchmark length would add 50M parameters to an 85M model.
``n_positions > 0`` adds learned absolute position embeddings for that many positions. No rotary embeddings.

The default config (d_model 768, 12 layers, 12 heads, vocab 256) has 85,252,608 parameters (the embedding counted
once; an untied head would add 196,608).

Decoding uses a KV cache: ``cache = model.allocate_cache(batch, max_len)``, then ``model(prompt, cache=cache)``
(prefill) and ``model.step(ids, cache)`` per token; both write keys and values at ``cache.pos`` and advance it.
:meth:`TransformerLM.static_step` is the same token step with static shapes (the position a device tensor, the
attention over a fixed prefix of the cache under a mask), which a CUDA graph can capture once and replay at every
position (:mod:`mamba_bio_audio.generation.transformer_decoder`).

Shapes: input_ids (batch, seqlen); hidden (batch, seqlen, d_model); per head (batch, n_head, seqlen, head_dim).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bio_audio.errors import UserError


@dataclass
class TransformerConfig:
    """Hyper-parameters of :class:`TransformerLM` (defaults: the 85.3M benchmark baseline)."""

    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    vocab_size: int = 256
    mlp_ratio: int = 4
    n_positions: int = 0  # 0 = no position embedding; > 0 = learned absolute positions 0 .. n_positions - 1
    norm_epsilon: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "n_head", "vocab_size", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"TransformerConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_head:
            raise UserError(f"TransformerConfig: d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.n_positions < 0:
            raise UserError(f"TransformerConfig.n_positions must be >= 0, got {self.n_positions}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class KVCache:
    """Keys and values of every layer for ``max_len`` positions; ``pos`` = positions filled so far.

    ``kv``: (n_layer, 2, batch, n_head, max_len, head_dim), uninitialised beyond ``pos`` (never read there by
    the eager path). ``position``: (1,) int64 on the cache's device, the next position for
    :meth:`TransformerLM.static_step` (which advances it, not ``pos``; its caller keeps the two in step).
    """

    def __init__(self, config: TransformerConfig, batch_size: int, max_len: int, device=None, dtype=None):
        if batch_size < 1 or max_len < 1:
            raise ValueError(f"need batch_size >= 1 and max_len >= 1, got {batch_size}, {max_len}")
        self.kv = torch.empty(config.n_layer, 2, batch_size, config.n_head, max_len, config.head_dim,
                              device=device, dtype=dtype)
        self.pos = 0
        self.position = torch.zeros(1, dtype=torch.long, device=device)

    @property
    def max_len(self) -> int:
        return self.kv.shape[4]

    @property
    def batch_size(self) -> int:
        return self.kv.shape[2]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, pos: int = 0) -> torch.Tensor:
        """x (batch, seqlen, d_model) -> (batch, seqlen, d_model).

        With ``kv`` (2, batch, n_head, max_len, head_dim) — one layer of a :class:`KVCache` — this chunk's keys and
        values are written at positions ``pos .. pos + seqlen - 1`` and the queries attend to positions
        ``0 .. their own``.
        """
        batch, seqlen, d_model = x.shape
        q, k, v = self.qkv(x).view(batch, seqlen, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if kv is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            end = pos + seqlen
            kv[0, :, :, pos:end] = k
            kv[1, :, :, pos:end] = v
            keys, values = kv[0, :, :, :end], kv[1, :, :, :end]
            if seqlen == 1:  # one new token sees every cached position
                y = F.scaled_dot_product_attention(q, keys, values)
            elif pos == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # a chunk after a filled prefix: query i (position pos + i) sees keys 0 .. pos + i
                mask = torch.ones(seqlen, end, dtype=torch.bool, device=x.device).tril(diagonal=pos)
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(batch, seqlen, d_model))

    def static_step(self, x: torch.Tensor, kv: torch.Tensor, position: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        """One token per sequence with static shapes: x (batch, 1, d_model) -> (batch, 1, d_model).

        Its key and value are written into ``kv`` (2, batch, n_head, max_len, head_dim) at ``position`` ((1,) int64
        device tensor); the query attends to the first ``length`` cached positions under ``mask``
        (1, 1, 1, length), additive (0 where ``j <= position``, -inf after). Positions masked out must hold
        finite values (softmax weight 0 times NaN is NaN).
        """
        batch, _, d_model = x.shape
        length = mask.shape[-1]
        q, k, v = self.qkv(x).view(batch, 1, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        kv[0].index_copy_(2, position, k)
        kv[1].index_copy_(2, position, v)
        y = F.scaled_dot_product_attention(q, kv[0, :, :, :length], kv[1, :, :, :length], attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(batch, 1, d_model))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.norm_epsilon)
        hidden = config.mlp_ratio * config.d_model
        self.mlp = nn.Sequential(nn.Linear(config.d_model, hidden), nn.GELU(), nn.Linear(hidden, config.d_model))

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, pos: int = 0) -> torch.Tensor:
        """x (batch, seqlen, d_model) -> same shape."""
        x = x + self.attn(self.norm1(x), kv, pos)
        return x + self.mlp(self.norm2(x))

    def static_step(self, x: torch.Tensor, kv: torch.Tensor, position: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        """x (batch, 1, d_model) -> same shape; see :meth:`CausalSelfAttention.static_step`."""
        x = x + self.attn.static_step(self.norm1(x), kv, position, mask)
        return x + self.mlp(self.norm2(x))


class TransformerLM(nn.Module):
    """input_ids (batch, seqlen) -> logits (batch, seqlen, vocab_size); a KV cache for decoding."""

    def __init__(self, config: TransformerConfig | None = None):
        super().__init__()
        self.config = config = config or TransformerConfig()
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.n_positions, config.d_model) if config.n_positions else None
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm_f = nn.LayerNorm(config.d_model, eps=config.norm_epsilon)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for layer in self.layers:  # GPT-2: residual projections scaled by 1/sqrt(2 n_layer)
            for proj in (layer.attn.proj, layer.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def allocate_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of up to ``max_len`` tokens (default: the model's
        device and dtype). Memory: n_layer * 2 * batch * max_len * d_model elements."""
        param = self.embedding.weight
        return KVCache(self.config, batch_size, max_len, device or param.device, dtype or param.dtype)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                num_last_tokens: int = 0) -> torch.Tensor:
        """input_ids (batch, seqlen) -> logits (batch, seqlen, vocab) (or of the last ``num_last_tokens``).

        With ``cache``, the tokens continue the cached positions (prefill or a chunk), and the cache advances.
        """
        batch, seqlen = input_ids.shape
        pos = 0 if cache is None else cache.pos
        if cache is not None and (pos + seqlen > cache.max_len or batch != cache.batch_size):
            raise ValueError(f"KV cache holds {cache.batch_size} x {cache.max_len} positions ({pos} used); "
                             f"got {batch} x {seqlen} more")
        hidden = self.embedding(input_ids)
        if self.position is not None:
            if pos + seqlen > self.config.n_positions:
                raise ValueError(f"position {pos + seqlen - 1} is beyond n_positions {self.config.n_positions}")
            hidden = hidden + self.position(torch.arange(pos, pos + seqlen, device=input_ids.device))
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden, None if cache is None else cache.kv[i], pos)
        if cache is not None:
            cache.pos = pos + seqlen
        if num_last_tokens > 0:
            hidden = hidden[:, -num_last_tokens:]
        return self.lm_head(self.norm_f(hidden))

    def step(self, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token per sequence: input_ids (batch,) -> logits (batch, vocab); the cache advances by one."""
        return self.forward(input_ids[:, None], cache)[:, 0]

    def static_step(self, input_ids: torch.Tensor, cache: KVCache, length: int | None = None) -> torch.Tensor:
        """One token per sequence at position ``cache.position``, with shapes that do not depend on it (what a
        CUDA graph captures): input_ids (batch,) -> logits (batch, vocab).

        Keys and values are written at ``cache.position`` (a device tensor, read on the device: no host sync),
        the queries attend to cache positions ``0 .. length - 1`` (default ``cache.max_len``) under a mask built
        from ``cache.position`` (position ``j`` is seen when ``j <= cache.position``), and ``cache.position``
        advances by one in place; ``cache.pos`` is left to the caller. Needs ``cache.position < length <=
        cache.max_len`` (not checked: it lives on the device) and finite values in cache positions
        ``cache.position + 1 .. length - 1``, which are read and masked. The attention reads ``length`` positions
        whatever the position, more than :meth:`step` (``pos + 1``); the logits are the same.
        """
        length = cache.max_len if length is None else length
        position = cache.position
        hidden = self.embedding(input_ids)[:, None]
        if self.position is not None:
            hidden = hidden + self.position(position)
        seen = torch.arange(length, device=position.device) <= position
        mask = torch.zeros(1, 1, 1, length, dtype=hidden.dtype, device=hidden.device)
        mask.masked_fill_(~seen, float("-inf"))
        for i, layer in enumerate(self.layers):
            hidden = layer.static_step(hidden, cache.kv[i], position, mask)
        position += 1
        return self.lm_head(self.norm_f(hidden[:, 0]))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, progress: bool | None = None) -> torch.Tensor:
        """input_ids (batch, prompt_len) -> (batch, prompt_len + max_new_tokens): prefill into a KV cache, then
        one cached :meth:`step` per token (eager). Sampling as :meth:`MambaLM.generate` (temperature 0 = greedy)."""
        from mamba_bio_audio.generation.sampling import check_generate_args, decode_loop, seeded_generator

        check_generate_args(input_ids, max_new_tokens, temperature, top_k, top_p)
        was_training = self.training
        self.eval()
        try:
            device = self.embedding.weight.device
            input_ids = input_ids.to(device)
            cache = self.allocate_cache(input_ids.shape[0], input_ids.shape[1] + max_new_tokens)
            logits = self(input_ids, cache=cache, num_last_tokens=1)[:, -1]
            return decode_loop(logits, lambda ids: self.step(ids, cache), input_ids, max_new_tokens, temperature,
                               top_k, top_p, seeded_generator(seed, device), progress)
        finally:
            self.train(was_training)
