"""A selective block's decode step fused (conv, x_proj, dt_proj, the state update; optionally the residual add,
RMSNorm and in_proj before them): a torch reference composed of the other ops' references, and two Triton
kernels."""
