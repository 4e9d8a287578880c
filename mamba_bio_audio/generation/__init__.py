"""Generation: recurrent decoding (:mod:`.decoder`), CUDA graphs of the decode step (:mod:`.cuda_graph`), and
sampling (:mod:`.sampling`). ``generate`` is what :meth:`MambaLM.generate` calls."""

from mamba_bio_audio.generation.decoder import Decoder, generate

__all__ = ["Decoder", "generate"]
