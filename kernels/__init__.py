"""Compute kernels: pure functions on tensors and their autograd wrappers (installed as ``mamba_bio_audio.kernels``).

Each op is a folder, laid out under one rule: ``reference.py`` is the torch path that runs on any device (the
"reference" backend), ``naive.py`` (where there is one) only the sequential test oracle, and ``triton_*.py`` or
the forward/backward/function split the Triton kernels. ``utils.py`` holds what several ops share (the output
allocator, memory layouts, Triton device functions). Nothing here knows about models; :mod:`mamba_bio_audio.ops`
picks the backend, and importing a folder imports nothing eagerly.

    selective_scan/          the scan over a sequence, forward and backward
    selective_state_update/  one recurrent step of the scan (decoding), state updated in place
    mamba_decode/            a block's decode step fused into two kernels
    causal_conv1d/           depthwise causal conv1d and its decode update
    rms_norm/                residual add + RMSNorm
"""
