"""Generation: recurrent decoding (:mod:`.decoder`), CUDA graphs of the decode step (:mod:`.cuda_graph`),
sampling (:mod:`.sampling`), the parallel prefill of a prompt for any audio LM (:mod:`.prefill`) and streaming
long outputs to growing WAVs (:mod:`.streaming`). ``generate`` is what :meth:`MambaLM.generate` calls."""

from mamba_bio_audio.generation.decoder import Decoder, generate

__all__ = ["Decoder", "generate"]
