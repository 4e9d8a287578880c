"""Compute kernels: pure functions on tensors and their autograd wrappers (installed as ``mamba_bio_audio.kernels``).

Each op is a folder: a simple reference (``naive.py``, the test oracle), a fast torch reference that runs on any
device, and the Triton kernels. Nothing here knows about models; :mod:`mamba_bio_audio.ops` picks the backend.
"""
