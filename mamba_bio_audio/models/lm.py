"""MambaLM: the backbone plus a (tied) language-model head — mamba_ssm's ``MambaLMHeadModel`` layout."""

from __future__ import annotations

import torch
import torch.nn as nn

from mamba_bio_audio.checkpoint import PretrainedMixin
from mamba_bio_audio.config import MambaConfig
from mamba_bio_audio.modules.block import BackboneMixin, MambaBackbone
from mamba_bio_audio.ops import resolve_seq_idx


class MambaLM(BackboneMixin, nn.Module, PretrainedMixin):
    """input_ids (batch, seqlen) -> logits (batch, seqlen, vocab_size).

    The embedding and head are padded to ``config.padded_vocab_size`` (so mamba_ssm checkpoints load); the
    returned logits are cut back to ``config.vocab_size``. ``MambaLM.from_pretrained`` reads a folder or a Hugging
    Face Hub id (``org/name[@revision]``) in mamba_ssm's or transformers' ``MambaForCausalLM`` layout;
    ``save_pretrained(folder, layout="transformers")`` and ``push_to_hub(repo_id)`` write them (docs/checkpoints.md).
    """

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def forward(self, input_ids: torch.Tensor, states: list[dict] | None = None,
                num_last_tokens: int = 0, seq_idx: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for every position (or the last ``num_last_tokens``); ``states`` receives prefill states.
        ``seq_idx`` (batch, seqlen) integers: several sequences packed in each row, each one run of equal values
        (e.g. 0 0 0 1 1 2 ...); every sequence gets the logits it gets alone (no prefill states then).
        ``cu_seqlens`` (n + 1,) integers, instead of seq_idx: n sequences packed into one row (batch 1), cumulative
        lengths from 0 to seqlen (:func:`~mamba_bio_audio.ops.resolve_seq_idx`; zero-length ones change nothing)."""
        seq_idx = resolve_seq_idx(seq_idx, cu_seqlens, *input_ids.shape[:2], input_ids.device)
        hidden = self.backbone(input_ids, states, seq_idx=seq_idx)
        if num_last_tokens > 0:
            hidden = hidden[:, -num_last_tokens:]
        return self.lm_head(hidden)[..., : self.config.vocab_size]

    def forward_segment(self, input_ids: torch.Tensor, carries: list | None = None):
        """Logits of one segment and the carries for the next (see ``MambaBackbone.forward_segment``)."""
        hidden, carries = self.backbone.forward_segment(input_ids, carries)
        return self.lm_head(hidden)[..., : self.config.vocab_size], carries

    def step(self, input_ids: torch.Tensor, states: list[dict]) -> torch.Tensor:
        """One token per sequence: input_ids (batch,) -> logits (batch, vocab_size); states advanced in place."""
        return self.lm_head(self.backbone.step(input_ids, states))[..., : self.config.vocab_size]

    def allocate_inference_cache(self, batch_size: int, device=None, dtype=None) -> list[dict]:
        """Per-layer zero states: ``conv_state`` (batch, d_inner, d_conv), ``ssm_state`` (batch, d_inner, d_state)."""
        return self.backbone.allocate_states(batch_size, device, dtype)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, progress: bool | None = None,
                 cuda_graph: bool | None = None) -> torch.Tensor:
        """Sample a continuation: input_ids (batch, prompt_len) -> (batch, prompt_len + max_new_tokens).

        The prompt is read once by the parallel scan (prefill); then one recurrent :meth:`step` per new token.
        temperature 0 is greedy; top_k 0 and top_p 1.0 disable those filters; ``seed`` makes sampling repeatable.
        On CUDA the step is captured once as a CUDA graph and replayed per token (``cuda_graph=False``: eager);
        on other devices it runs eagerly whatever ``cuda_graph`` says. To generate repeatedly without capturing
        each time, build a :class:`mamba_bio_audio.generation.decoder.Decoder` once and call it.
        """
        from mamba_bio_audio.generation import generate

        return generate(self, input_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        seed=seed, progress=progress, cuda_graph=cuda_graph)
