"""Decoding the Transformer baseline with its token step replayed as CUDA graphs (a static KV cache).

:class:`TransformerDecoder` mirrors the MambaLM's :class:`~mamba_bio_audio.generation.decoder.Decoder`: it holds a
preallocated :class:`~mamba_bio_audio.models.transformer.KVCache` for one batch size and ``max_len`` positions and a
step (:meth:`~mamba_bio_audio.models.transformer.TransformerLM.static_step`) whose shapes do not depend on the
position: the position is a device tensor in the cache, the new key and value are written there, and the query
attends to a fixed prefix of the cache under a mask built from that tensor. On CUDA the step is captured once
(:class:`GraphedLengths`) and replayed per token; elsewhere it runs eagerly, the same function. The prompt is
prefilled eagerly (``model(prompt, cache=cache)``, in place into the same cache), and sampling is
:func:`~mamba_bio_audio.generation.sampling.decode_loop`, outside the graphs, as for every LM here.

The cost of static shapes: a graph attends to the same number of cache positions at every step, so it reads more
of the cache than the eager :meth:`~mamba_bio_audio.models.transformer.TransformerLM.step`, which attends to the
``pos + 1`` filled positions. Attending to the whole ``max_len`` buffer at every step (what graph-captured
static-cache decoding does elsewhere, e.g. transformers' ``StaticCache`` under ``torch.compile``) reads on average
twice the keys and values of the eager path over a generation from a short prompt, which matters at large batch,
where the cache reads dominate a step. Here the attended length is bucketed instead: one graph per multiple of
``bucket`` positions (the last one ``max_len``), all captured up front into one memory pool, and each step replays
the smallest that covers its position, so a step reads at most ``bucket - 1`` masked positions. The graph is
picked on the host from the host's copy of the position (``cache.pos``), so replay needs no device-to-host sync.
``bucket=0`` gives one graph over the whole ``max_len`` buffer. Multiples rather than powers of two: a step reads
at most ``bucket - 1`` extra positions (powers of two would read up to twice the filled length), for
``ceil(max_len / bucket)`` captures up front (9 at the largest-batch benchmark's 2,064 positions). With a mask SDPA
cannot take its flash kernel; it picks among the others (memory-efficient, cuDNN, math).

The masked positions are read, so they must be finite (softmax weight 0 times NaN is NaN): the cache is zeroed
when allocated and, at each call, beyond the prompt.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mamba_bio_audio.generation.cuda_graph import capture_per_key
from mamba_bio_audio.generation.decoder import use_cuda_graph
from mamba_bio_audio.generation.sampling import check_generate_args, decode_loop, seeded_generator

DEFAULT_BUCKET = 256


def attended_lengths(max_len: int, bucket: int = DEFAULT_BUCKET) -> list[int]:
    """The attended lengths graphs are captured for: multiples of ``bucket`` below ``max_len``, then ``max_len``
    (``bucket`` 0 or >= max_len: ``[max_len]``)."""
    if max_len < 1 or bucket < 0:
        raise ValueError(f"need max_len >= 1 and bucket >= 0, got {max_len}, {bucket}")
    if bucket == 0:
        return [max_len]
    return list(range(bucket, max_len, bucket)) + [max_len]


def length_for(position: int, max_len: int, bucket: int = DEFAULT_BUCKET) -> int:
    """The attended length of the step that writes ``position``: the smallest of :func:`attended_lengths` above
    it (``position + 1`` rounded up to a multiple of ``bucket``, at most ``max_len``)."""
    if bucket == 0:
        return max_len
    return min(max_len, -(-(position + 1) // bucket) * bucket)


class GraphedLengths:
    """``step(ids, length) -> logits`` captured as one CUDA graph per attended length.

    Args:
        step: ``ids (batch,) int64, length -> logits (batch, vocab)``; writes into the cache and advances its
            device position in place.
        lengths: the attended lengths to capture, ascending.
        reset: puts the cache back to its start (zeroed keys and values, position 0), in place.
        batch_size: rows of ``ids``. device: a CUDA device.
        fill_token: the token in the static input buffer during warm-up and capture (any valid id).

    Construction resets the cache, runs one warm-up step per length and captures one graph per length into one
    memory pool (:func:`~mamba_bio_audio.generation.cuda_graph.capture_per_key`; the ``k``-th warm-up step writes
    position ``k``, below its length since the lengths are distinct and ascending; a capture runs nothing) and
    finally resets the cache. ``graphed(ids, length)`` copies ``ids`` into the static input buffer and replays
    that length's graph; it returns the logits, a view into graph memory valid until the next call (any graph of
    the pool may overwrite it).
    """

    def __init__(self, step: Callable[[torch.Tensor, int], torch.Tensor], lengths: list[int],
                 reset: Callable[[], None], batch_size: int, device: torch.device | str, fill_token: int = 0):
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.ids = torch.full((batch_size,), fill_token, dtype=torch.long, device=device)
        reset()
        self.graphs, self.logits = capture_per_key(step, lengths, self.ids, device)
        reset()

    def __call__(self, input_ids: torch.Tensor, length: int) -> torch.Tensor:
        """input_ids (batch,) -> logits (batch, vocab) of the step attending to ``length`` positions."""
        self.ids.copy_(input_ids)
        self.graphs[length].replay()
        return self.logits[length]


class TransformerDecoder:
    """Reusable static-cache decoding for one TransformerLM at one batch size and ``max_len`` positions.

    ``decoder = TransformerDecoder(model, batch_size, max_len)`` allocates a zeroed KV cache and, on CUDA (unless
    ``cuda_graph=False``), captures :meth:`static_step` once per attended length (:func:`attended_lengths` of
    ``bucket``); every call ``decoder(input_ids, max_new_tokens, ...)`` then prefills the prompt into the same cache
    (in place) and replays the graphs, one per token, ``prompt_len + max_new_tokens <= max_len``. Off CUDA the
    same step runs eagerly. The graphs read the model's parameters where they are: update them in place and the
    graphs follow; move or cast the model and you need a new decoder.
    """

    def __init__(self, model, batch_size: int, max_len: int, cuda_graph: bool | None = None,
                 bucket: int = DEFAULT_BUCKET):
        if batch_size < 1 or max_len < 1:
            raise ValueError(f"need batch_size >= 1 and max_len >= 1, got {batch_size}, {max_len}")
        n_positions = model.config.n_positions
        if n_positions and max_len > n_positions:
            raise ValueError(f"max_len {max_len} is beyond the model's n_positions {n_positions}")
        self.model, self.batch_size, self.max_len = model, batch_size, max_len
        self.lengths = attended_lengths(max_len, bucket)
        self.bucket = bucket
        self.device = next(model.parameters()).device
        self.graphed = use_cuda_graph(cuda_graph, self.device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                self.cache = model.allocate_cache(batch_size, max_len)
                self.reset()
                self.graphs = None
                if self.graphed:
                    self.graphs = GraphedLengths(self.static_step, self.lengths, self.reset, batch_size, self.device)
        finally:
            model.train(was_training)

    def reset(self) -> None:
        """Zero the cache's keys and values and its positions, in place."""
        self.cache.kv.zero_()
        self.cache.position.zero_()
        self.cache.pos = 0

    def static_step(self, input_ids: torch.Tensor, length: int) -> torch.Tensor:
        """input_ids (batch,) -> logits (batch, vocab), attending to ``length`` cache positions; the cache's device
        position advances (also what the graphs run). See :meth:`TransformerLM.static_step`."""
        return self.model.static_step(input_ids, self.cache, length)

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (batch,) at position ``cache.pos`` -> logits (batch, vocab) of the next position: the graph
        (or eager step) of the smallest attended length that covers it; ``cache.pos`` advances."""
        pos = self.cache.pos
        if pos >= self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions, all used")
        length = length_for(pos, self.max_len, self.bucket)
        logits = self.graphs(input_ids, length) if self.graphed else self.static_step(input_ids, length)
        self.cache.pos = pos + 1
        return logits

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, progress: bool | None = None) -> torch.Tensor:
        """input_ids (batch, prompt_len) -> (batch, prompt_len + max_new_tokens); sampling as
        :meth:`TransformerLM.generate` (temperature 0 = greedy)."""
        check_generate_args(input_ids, max_new_tokens, temperature, top_k, top_p)
        batch, prompt_len = input_ids.shape
        if batch != self.batch_size:
            raise ValueError(f"this decoder was built for batch {self.batch_size}, got {batch} prompts")
        if prompt_len + max_new_tokens > self.max_len:
            raise ValueError(f"prompt {prompt_len} + {max_new_tokens} new tokens is beyond this decoder's "
                             f"max_len {self.max_len}")
        model, cache = self.model, self.cache
        was_training = model.training
        model.eval()
        try:
            input_ids = input_ids.to(self.device)
            generator = seeded_generator(seed, self.device)
            cache.pos = 0
            logits = model(input_ids, cache=cache, num_last_tokens=1)[:, -1]  # writes positions 0 .. prompt_len - 1
            cache.kv[:, :, :, :, prompt_len:].zero_()  # read under the mask: must be finite
            cache.position.fill_(prompt_len)
            return decode_loop(logits, self.step, input_ids, max_new_tokens, temperature, top_k, top_p, generator,
                               progress)
        finally:
            model.train(was_training)


def generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, progress: bool | None = None,
             cuda_graph: bool | None = None, bucket: int = DEFAULT_BUCKET) -> torch.Tensor:
    """A :class:`TransformerDecoder` for this call: (batch, prompt_len) -> (batch, prompt_len + max_new_tokens)."""
    check_generate_args(input_ids, max_new_tokens, temperature, top_k, top_p)
    batch, prompt_len = input_ids.shape
    decoder = TransformerDecoder(model, batch, prompt_len + max_new_tokens, cuda_graph, bucket)
    return decoder(input_ids, max_new_tokens, temperature, top_k, top_p, seed, progress)
