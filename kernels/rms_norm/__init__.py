"""Fused residual add + RMSNorm (the pre-norm block's "add then norm"): a torch reference and Triton kernels."""
