"""Generating from a MambaLM: prefill the prompt in parallel, then one recurrent step per new token.

:class:`Decoder` holds a MambaLM's recurrent states and its step, replayed as a CUDA graph on CUDA
(:class:`~mamba_bio_audio.generation.cuda_graph.GraphedStep`); the eager path calls the same step function.
The loop and the sampling are :func:`~mamba_bio_audio.generation.sampling.decode_loop` and
:func:`~mamba_bio_audio.generation.sampling.sample_next`, outside the graph.
"""

from __future__ import annotations

import contextlib

import torch

from mamba_bio_audio.generation.cuda_graph import GraphedStep
from mamba_bio_audio.generation.sampling import check_generate_args, decode_loop, seeded_generator


def use_cuda_graph(cuda_graph: bool | None, device: torch.device) -> bool:
    """Graphs on CUDA unless ``cuda_graph`` is False; never on other devices (eager there)."""
    return device.type == "cuda" and cuda_graph is not False


def refresh_decode_params(model) -> None:
    """Fill every Mamba mixer's decode-parameter buffers from its current weights (see Mamba.step)."""
    from mamba_bio_audio.modules.mixer import Mamba

    for module in model.modules():
        if isinstance(module, Mamba):
            module.refresh_decode_params()


@contextlib.contextmanager
def use_decode_params(model):
    """Within: the model's Mamba mixers decode from their decode-parameter buffers."""
    from mamba_bio_audio.modules.mixer import Mamba

    mixers = [m for m in model.modules() if isinstance(m, Mamba)]
    for m in mixers:
        m.use_decode_params = True
    try:
        yield
    finally:
        for m in mixers:
            m.use_decode_params = False


class Decoder:
    """Reusable decoding for one MambaLM at one batch size: its recurrent states and its decode step.

    ``decoder = Decoder(model, batch_size)`` allocates the states (``model.allocate_inference_cache``) and, on
    CUDA (unless ``cuda_graph=False``), captures ``model.step`` as a CUDA graph once; every call
    ``decoder(input_ids, max_new_tokens, ...)`` then prefills the prompt into the same state buffers (in place)
    and replays the graph per token. Build one to generate repeatedly without paying for the capture each time
    (benchmarks do); :meth:`MambaLM.generate` builds one per call. The graph reads the model's parameters where
    they are: update them in place (an optimizer step, ``load_state_dict``) and the graph follows; move or cast
    the model (``.to``, ``.half``) or change its backend and you need a new Decoder.
    """

    def __init__(self, model, batch_size: int, cuda_graph: bool | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.batch_size = model, batch_size
        self.device = next(model.parameters()).device
        self.graphed = use_cuda_graph(cuda_graph, self.device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                self.states = model.allocate_inference_cache(batch_size, device=self.device)
                refresh_decode_params(model)
                self.step = self.eager_step
                if self.graphed:
                    self.step = GraphedStep(self.eager_step, self.states, batch_size, self.device)
        finally:
            model.train(was_training)

    def eager_step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (batch,) -> logits (batch, vocab); the states advance in place (also what the graph runs).
        The mixers read their decode parameters from buffers (see ``Mamba.refresh_decode_params``)."""
        with use_decode_params(self.model):
            return self.model.step(input_ids, self.states)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, progress: bool | None = None) -> torch.Tensor:
        """input_ids (batch, prompt_len) -> (batch, prompt_len + max_new_tokens); see :meth:`MambaLM.generate`."""
        check_generate_args(input_ids, max_new_tokens, temperature, top_k, top_p)
        if input_ids.shape[0] != self.batch_size:
            raise ValueError(f"this Decoder was built for batch {self.batch_size}, got {input_ids.shape[0]} prompts")
        model = self.model
        was_training = model.training
        model.eval()
        try:
            input_ids = input_ids.to(self.device)
            generator = seeded_generator(seed, self.device)
            # the prefill overwrites every state tensor in place, so the graph's buffers now hold the prompt's state
            logits = model(input_ids, states=self.states, num_last_tokens=1)[:, -1]
            refresh_decode_params(model)  # in place: the weights may have changed since the capture
            if self.graphed:
                self.step.t = 0
            return decode_loop(logits, self.step, input_ids, max_new_tokens, temperature, top_k, top_p, generator,
                               progress)
        finally:
            model.train(was_training)


def generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, progress: bool | None = None,
             cuda_graph: bool | None = None) -> torch.Tensor:
    """See :meth:`mamba_bio_audio.models.lm.MambaLM.generate`. Returns (batch, prompt_len + max_new_tokens)."""
    check_generate_args(input_ids, max_new_tokens, temperature, top_k, top_p)
    return Decoder(model, input_ids.shape[0], cuda_graph)(input_ids, max_new_tokens, temperature, top_k, top_p,
                                                          seed, progress)
