"""The selective scan (Mamba-1's S6) over a whole sequence, forward and backward:

    dt_t  = softplus(delta_t + delta_bias)  (or without softplus)      (batch, dim, seqlen)
    h_t   = exp(dt_t A) * h_{t-1} + dt_t B_t u_t                       (batch, dim, d_state), h_{-1} = initial_state
    y_t   = C_t . h_t + D u_t ;  out_t = y_t * silu(z_t)

Files: ``naive.py`` the sequential test oracle; ``reference.py`` the chunked torch scan that runs anywhere;
``function.py`` the Triton scan's autograd Function and entry point, ``forward.py`` / ``backward.py`` its kernels,
``tiles.py`` the device functions both share, ``plan.py`` its launch configuration. ``NOTES.md``: the design,
the measurements behind the defaults, and what to try next.

Triton design: a program owns (one batch row, BLOCK_D channels that share one B/C group, one time segment). Its
state (BLOCK_N, BLOCK_D) stays in registers while it walks the segment in chunks of CHUNK steps. Inside a chunk
the recurrence is a first-order linear scan over a (CHUNK, BLOCK_N, BLOCK_D) tile: pairs (a, b) meaning
h -> a h + b compose associatively, so ``tl.associative_scan`` gives every h_t of the chunk from the carried
state. Time is the slowest tile axis on purpose: Triton's default layout puts lanes on the last axis (channels,
then d_state), so each thread holds whole time columns and the scan runs sequentially in registers, with no
shuffles. d_state is padded to BLOCK_N (a power of 2) with masks; padded states stay zero.
"""
