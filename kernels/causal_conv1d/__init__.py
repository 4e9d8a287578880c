"""Depthwise causal conv1d (the causal-conv1d package's ``causal_conv1d_fn`` / ``causal_conv1d_update``): a torch
reference and Triton kernels."""
