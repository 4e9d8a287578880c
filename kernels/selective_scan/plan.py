"""Launch configuration of the selective scan: defaults, the configs worth sweeping, and each call's sizes.

The defaults were chosen by an H100 sweep; NOTES.md has the measurements behind each one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mamba_bio_audio.kernels.utils import cdiv, next_power_of_2, time_contiguous

DEFAULT_CHUNK = 8  # fastest fwd + bwd at the bench shapes (16: faster forward, slower backward; 4: slower both)
DEFAULT_BLOCK_D = 8
DEFAULT_NUM_WARPS = 1
DEFAULT_NUM_STAGES = 3  # software pipelining of the chunk loops' loads
# Register cap of the main backward kernel. Uncapped, the compiler takes ~225-255 registers per thread, room for 8
# one-warp programs per SM; capped at 168, 12. AUTO_BWD_MAXNREG (the default): the cap where it turns a grid of
# more than one wave into one wave (:func:`auto_bwd_maxnreg`), else none. The environment variable
# MBA_SCAN_BWD_MAXNREG overrides it (0: no cap, "auto", or a register count).
AUTO_BWD_MAXNREG = -1
DEFAULT_BWD_MAXNREG: int | None = AUTO_BWD_MAXNREG
CAPPED_BWD_MAXNREG, CAPPED_PROGRAMS_PER_SM, UNCAPPED_PROGRAMS_PER_SM = 168, 12, 8
BWD_MAXNREG_ENV = "MBA_SCAN_BWD_MAXNREG"
# How the backward recomputes the chunk-start states a save_every > 1 forward did not keep: "parallel" (its own
# pass over every save group at once, into a buffer that lives for that backward) or "inline" (in the walk, one
# group at a time, into a small scratch: no buffer). MBA_SCAN_RECOMPUTE overrides.
DEFAULT_RECOMPUTE, RECOMPUTE_ENV = "inline", "MBA_SCAN_RECOMPUTE"


def auto_bwd_maxnreg(programs: int, num_warps: int, sms: int | None) -> int | None:
    """The backward's register cap for a grid of ``programs`` programs of ``num_warps`` warps on ``sms`` SMs:
    CAPPED_BWD_MAXNREG when the grid needs more than one wave uncapped (8 one-warp programs per SM) and fits in
    one capped (12 per SM), else None. Measured on an H100 (2026-12-07, results/bench_scan_variants_2230.md): at
    (8, 1536, 2048), 1,536 programs on 132 SMs (1.45 waves uncapped), fwd + bwd 1.871 -> 1.596 ms; at (1, 1536,
    65536), 12,672 programs in many waves either way, 7.127 -> 7.369 ms (slower: the cap's spills without a
    wave to save), so no cap there. One-warp programs only (the default)."""
    if sms is None or num_warps != 1:
        return None
    return CAPPED_BWD_MAXNREG if UNCAPPED_PROGRAMS_PER_SM * sms < programs <= CAPPED_PROGRAMS_PER_SM * sms else None


def resolve_bwd_maxnreg(cap: int | None, programs: int, num_warps: int, device: torch.device) -> int | None:
    """The register cap a backward launch of ``programs`` programs takes: ``cap`` as the tunables hold it, with
    AUTO_BWD_MAXNREG decided by :func:`auto_bwd_maxnreg` for ``device``'s SMs (:func:`sm_count`, looked up here
    so that ``dev/sass_count.py --shape`` plans the cap as it plans time segments, for the GPU it stands in)."""
    return auto_bwd_maxnreg(programs, num_warps, sm_count(device)) if cap == AUTO_BWD_MAXNREG else cap
# Chunks between saved states (the backward recomputes the ones between): 1 unless the saved states of a call
# would pass SAVED_STATE_BYTES, then the smallest power of 2 (at most MAX_SAVE_EVERY) that keeps them under it.
SAVED_STATE_BYTES, MAX_SAVE_EVERY = 1 << 30, 8
# Time segments are added when fewer warps than LOW_WARPS_PER_SM would run, aiming at TARGET_WARPS_PER_SM.
LOW_WARPS_PER_SM, TARGET_WARPS_PER_SM, MAX_SEGMENTS = 8, 96, 256


def autotune_candidates() -> list[dict]:
    """Configs worth timing on the GPU (keyword arguments of :func:`selective_scan_triton`).

    Tiles are (chunk_size, d_state, block_d) with lanes on channels: with block_d = 8 and one warp, each thread
    holds chunk_size x d_state/4 values of one channel (d_state over 4 lanes); block_d = 32 * num_warps puts the
    whole state of a channel in one thread (no shuffles for sums over d_state, but register spills at d_state 16).
    """
    return [
        {"chunk_size": chunk, "block_d": block_d, "num_warps": warps, "num_stages": stages, "save_every": save}
        for chunk, block_d, warps, stages, save in [
            (8, 8, 1, 3, 1), (8, 8, 1, 1, 1), (8, 8, 1, 2, 1), (4, 8, 1, 3, 1), (16, 8, 1, 3, 1), (8, 4, 1, 3, 1),
            (4, 16, 1, 3, 1), (8, 16, 2, 3, 1), (8, 8, 1, 3, 4),
        ]
    ]


@dataclass(frozen=True)
class Tunables:
    """The launch keywords of one call of :func:`selective_scan_triton`, defaults filled in."""

    chunk_size: int
    block_d: int
    num_warps: int
    n_segments: int | None
    num_stages: int = 1
    save_every: int = 1
    softplus_in_kernel: bool = False  # with delta_softplus: in the scan kernels, not the fp32 dt buffer's pass
    bwd_maxnreg: int | None = None  # register cap of the main backward kernel (ptxas .maxnreg): more warps per SM
    # save_every > 1: the backward recomputes the unsaved chunk-start states in a pass of its own over all save
    # groups at once (True) or inside its walk, one group at a time (False)
    parallel_recompute: bool = False


@dataclass(frozen=True)
class Plan:
    """Sizes of one call: the channel partition and the time split."""

    batch: int
    dim: int
    seqlen: int
    d_state: int
    block_n: int
    chunk: int
    nchunks: int
    groups: int  # G: partitions of the channels, lcm of the B and C group counts
    groups_b: int
    groups_c: int

    def blocks(self, block_d: int) -> int:
        """Channel blocks per partition."""
        return cdiv(self.dim // self.groups, block_d)

    def even(self, block_d: int) -> bool:
        """Whether every tile of the main kernels lies inside the shapes: seqlen a multiple of the chunk, each
        partition's channels a multiple of ``block_d``, d_state a power of 2 (the kernels' EVEN: no masks)."""
        return self.seqlen % self.chunk == 0 and (self.dim // self.groups) % block_d == 0 and \
            self.d_state == self.block_n

    def segments(self, block_d: int, num_warps: int, n_segments: int | None, device: torch.device,
                 programs: int | None = None) -> tuple[int, int]:
        """(nseg, chunks per segment). Auto (CUDA): split time when the channel blocks (``programs`` of them per
        batch row, default all) would leave the GPU nearly idle, e.g. batch 1 with long sequences; at most
        MAX_SEGMENTS, at least 4 chunks each."""
        if n_segments is None:
            n_segments = 1
            warps = self.batch * (programs or self.groups * self.blocks(block_d)) * num_warps
            sms = sm_count(device)
            if sms is not None and warps < LOW_WARPS_PER_SM * sms:
                n_segments = min(cdiv(TARGET_WARPS_PER_SM * sms, warps), MAX_SEGMENTS, self.nchunks // 4)
        per_seg = cdiv(self.nchunks, max(1, min(n_segments, self.nchunks)))
        return cdiv(self.nchunks, per_seg), per_seg


def sm_count(device: torch.device) -> int | None:
    """Streaming multiprocessors of ``device``, None off CUDA (then :meth:`Plan.segments` plans no time split).
    ``dev/sass_count.py --shape`` stands a GPU's count in here to plan as a launch on that GPU would."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None


def bc_groups(X: torch.Tensor) -> tuple[bool, int]:
    """(varying, groups) of a B/C argument: (dim, d_state) fixed, or (batch[, groups], d_state, seqlen)."""
    if X.dim() == 2:
        return False, 1
    if X.dim() in (3, 4):
        return True, 1 if X.dim() == 3 else X.shape[1]
    raise ValueError(f"B/C must have 2, 3 or 4 dimensions, got shape {tuple(X.shape)}")


def make_plan(u, A, B, C, chunk_size: int) -> Plan:
    """The sizes of a call with u (batch, dim, seqlen), A (dim, d_state) and B, C in any layout; a ValueError
    when dim is not a multiple of the B/C groups or chunk_size is not a power of 2."""
    batch, dim, seqlen = u.shape
    d_state = A.shape[1]
    (_, groups_b), (_, groups_c) = bc_groups(B), bc_groups(C)
    groups = math.lcm(groups_b, groups_c)
    if dim % groups != 0:
        raise ValueError(f"dim {dim} is not a multiple of the number of B/C groups ({groups_b}, {groups_c})")
    if chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of 2, got {chunk_size}")
    return Plan(batch, dim, seqlen, d_state, next_power_of_2(d_state), chunk_size,
                 cdiv(seqlen, chunk_size), groups, groups_b, groups_c)


def auto_save_every(state_bytes: int) -> int:
    """Chunks between saved states for saved states of ``state_bytes`` at save_every 1: the smallest power of 2
    (at most MAX_SAVE_EVERY) that keeps them under SAVED_STATE_BYTES."""
    save_every = 1
    while state_bytes > SAVED_STATE_BYTES * save_every and save_every < MAX_SAVE_EVERY:
        save_every *= 2
    return save_every


def same_layout(u: torch.Tensor, *others: torch.Tensor | None) -> list[torch.Tensor | None]:
    """u, delta, z (batch, dim, seqlen) in one layout (stride_b, stride_d, 1) that the kernels index: theirs when
    they share it and time is contiguous (e.g. channel-major views (L, batch * L, 1) of a projection's output),
    else contiguous copies."""
    tensors = [u, *others]
    shared = time_contiguous(u) and all(t.stride() == u.stride() for t in tensors if t is not None)
    return [t.contiguous() if t is not None and not shared else t for t in tensors]


def as_groups(B: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Varying B/C -> (batch, groups, d_state, seqlen) views sharing one layout with time contiguous (copied
    when they do not); fixed -> contiguous (dim, d_state)."""
    B, C = ((X.unsqueeze(1) if X.dim() == 3 else X) for X in (B, C))
    varying = [X for X in (B, C) if X.dim() == 4]
    ok = all(X.stride(-1) == 1 and X.stride() == varying[0].stride() for X in varying)
    return tuple(X.contiguous() if X.dim() == 2 or not ok else X for X in (B, C))


def strides(u: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> tuple[int, int, int, int, int]:
    """(stride_b, stride_d) of the (batch, dim, seqlen) tensors and (batch, group, state) strides of B/C."""
    varying = B if B.dim() == 4 else C
    bc = varying.stride()[:3] if varying.dim() == 4 else (0, 0, 0)
    return (u.stride(0), u.stride(1), *bc)


def shape_args(p: Plan, block_d: int) -> tuple:
    """The kernels' channel-partition arguments: (channels per partition, blocks per partition, groups of B,
    partitions per B group, groups of C, partitions per C group)."""
    return (p.dim // p.groups, p.blocks(block_d), p.groups_b, p.groups // p.groups_b, p.groups_c,
            p.groups // p.groups_c)
