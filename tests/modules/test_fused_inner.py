"""The fused inner mixer (modules/fused_inner.py, ``MambaConfig.fused_inner``): the same output and every gradient as
the unfused mixer (fp64 on the reference backend; fp32 through the Triton kernels, interpreted on CPU), less kept
for the backward (the conv output and delta, counted by saved-tensor hooks), the calls it leaves to the unfused
path; ``-m gpu``: bf16 / fp32 on CUDA and the peak memory of a training step."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mamba_bio_audio import MambaConfig, MambaLM  # noqa: E402
from mamba_bio_audio.benchmarks.memory import activation_bytes  # noqa: E402
from mamba_bio_audio.errors import UserError  # noqa: E402
from mamba_bio_audio.modules.mixer import Mamba, set_backend  # noqa: E402

from conftest import rel_err  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
cpu_triton = pytest.mark.skipif(not INTERPRETING, reason="CPU tensors need TRITON_INTERPRET=1")
cuda_triton = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING,
                                 reason="needs CUDA and TRITON_INTERPRET=0")
pytestmark = pytest.mark.usefixtures("one_thread")


def mixer_pair(backend: str, dtype=torch.float64, device="cpu", d_model=8, d_state=4, mode="all",
               **kw) -> tuple[Mamba, Mamba]:
    """(fused, unfused) mixers with the same weights; the fused one's ``fused_inner`` = ``mode``."""
    torch.manual_seed(0)
    fused = Mamba(MambaConfig(d_model=d_model, d_state=d_state, fused_inner=mode, **kw)).to(device, dtype)
    unfused = copy.deepcopy(fused)
    unfused.config = MambaConfig(d_model=d_model, d_state=d_state, fused_inner="off", **kw)
    for m in (fused, unfused):
        m.backend = backend
    return fused, unfused


def packed_ids(batch: int, seqlen: int) -> torch.Tensor:
    """seq_idx (batch, seqlen): row 0 one sequence, later rows cut in 2-3 sequences at odd places."""
    idx = torch.zeros(batch, seqlen, dtype=torch.int64)
    for b in range(1, batch):
        idx[b, seqlen // 3 + b:] = 1
        idx[b, 2 * seqlen // 3 + b:] = 2
    return idx


def run(mixer: Mamba, hidden: torch.Tensor, seq_idx=None, autocast=None):
    """(output, input gradient, {parameter: gradient}) of a fixed random projection of the output, and the
    names of the autograd nodes behind the output."""
    mixer.zero_grad(set_to_none=True)
    h = hidden.detach().clone().requires_grad_()
    with torch.autocast(h.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = mixer(h, seq_idx=seq_idx)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (out.double() * weights.to(out.device)).sum().backward()
    return out.detach(), h.grad, {n: p.grad for n, p in mixer.named_parameters()}, node_names(out)


def node_names(out: torch.Tensor) -> set[str]:
    seen, todo = set(), [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            todo.extend(f for f, _ in fn.next_functions)
    return {type(fn).__name__ for fn in seen}


def assert_same(fused_run, unfused_run, out_tol: float, grad_tol: float):
    out, dh, grads, names = fused_run
    out0, dh0, grads0, names0 = unfused_run
    assert "MambaInnerFnBackward" in names and "MambaInnerFnBackward" not in names0
    assert rel_err(out, out0) <= out_tol
    assert rel_err(dh, dh0) <= grad_tol
    assert grads.keys() == grads0.keys()
    for name, g0 in grads0.items():
        assert grads[name] is not None, name
        assert rel_err(grads[name], g0) <= grad_tol, name


@pytest.mark.parametrize("batch, seqlen, packed", [(1, 1, False), (2, 13, False), (3, 29, True), (2, 37, True)])
def test_reference_fp64_same_output_and_gradients(batch, seqlen, packed):
    fused, unfused = mixer_pair("reference")
    hidden = torch.randn(batch, seqlen, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    seq_idx = packed_ids(batch, seqlen) if packed else None
    assert_same(run(fused, hidden, seq_idx), run(unfused, hidden, seq_idx), 1e-14, 1e-12)


def test_reference_fp64_bidirectional_with_lengths():
    fused, unfused = mixer_pair("reference", bidirectional=True)
    hidden = torch.randn(2, 19, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([19, 11])
    results = []
    for m in (fused, unfused):
        h = hidden.clone().requires_grad_()
        out = m(h, lengths=lengths)
        out.square().sum().backward()
        results.append((out.detach(), h.grad, {n: p.grad for n, p in m.named_parameters()}, node_names(out)))
    assert_same(*results, 1e-14, 1e-12)


def test_reference_fp64_whole_lm_with_checkpointing():
    """The fused mixer inside a model, also under checkpoint level 1 (its forward rerun in the backward)."""
    ids = torch.randint(0, 7, (2, 21), generator=torch.Generator().manual_seed(4))
    results = []
    for fused, level in (("off", 0), ("all", 0), ("all", 1)):
        torch.manual_seed(0)
        model = set_backend(MambaLM(MambaConfig(d_model=8, n_layer=2, vocab_size=7, d_state=4, fused_inner=fused,
                                                checkpoint_level=level)).double(), "reference")
        logits = model(ids)
        logits.square().sum().backward()
        results.append((logits.detach(), [p.grad for p in model.parameters()]))
    (out0, grads0), *others = results
    for out, grads in others:
        assert rel_err(out, out0) < 1e-14
        for g, g0 in zip(grads, grads0):
            assert rel_err(g, g0) < 1e-12


@cpu_triton
@pytest.mark.parametrize("mode", ["all", "keep", "keep-out-proj-inside"])
@pytest.mark.parametrize("batch, seqlen, packed", [(1, 9, False), (2, 21, True), (3, 16, False)])
def test_triton_fp32_same_output_and_gradients(batch, seqlen, packed, mode, monkeypatch):
    """"all" runs out_proj inside the Function (no y kept), "keep" after it unless MBA_FUSED_OUT_PROJ_INSIDE=1."""
    if mode == "keep-out-proj-inside":
        mode = "keep"
        monkeypatch.setenv("MBA_FUSED_OUT_PROJ_INSIDE", "1")
    fused, unfused = mixer_pair("triton", torch.float32, mode=mode)
    hidden = torch.randn(batch, seqlen, 8, generator=torch.Generator().manual_seed(1))
    seq_idx = packed_ids(batch, seqlen) if packed else None
    fused_run = run(fused, hidden, seq_idx)
    assert_same(fused_run, run(unfused, hidden, seq_idx), 1e-6, 1e-5)
    # one Function from in_proj's output to the scan's: no split of it, no A = -exp(A_log) node outside
    assert not {"SplitWithSizesBackward0", "SplitBackward0", "ExpBackward0", "NegBackward0"} & fused_run[3]


@cpu_triton
@pytest.mark.parametrize("mode", ["all", "keep"])
def test_triton_bf16_autocast_same_output_and_gradients(mode):
    """Under autocast the recomputed u and delta are the forward's (same casts), so the output is the unfused
    path's; the gradients follow its bf16 products, except that the conv output's two gradients (the scan's and
    x_proj's) are summed inside one bf16 ``addmm_`` (one rounding) where autograd rounds the product first: a
    few 1e-4 apart, a tenth of bf16's resolution."""
    fused, unfused = mixer_pair("triton", torch.float32, mode=mode)
    hidden = torch.randn(2, 17, 8, generator=torch.Generator().manual_seed(5))
    assert_same(run(fused, hidden, autocast=torch.bfloat16), run(unfused, hidden, autocast=torch.bfloat16),
                1e-6, 1e-3)


def saved_storages(mixer: Mamba, hidden: torch.Tensor) -> dict[int, int]:
    """{storage address: bytes} of every tensor the forward saves for the backward, parameters and the input
    excepted (each storage once: views of one buffer count once)."""
    skip = {p.untyped_storage().data_ptr() for p in mixer.parameters()} | {hidden.untyped_storage().data_ptr()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mixer(hidden)
    return seen


@cpu_triton
def test_triton_fused_keeps_less_by_the_conv_output_and_delta():
    fused, unfused = mixer_pair("triton", torch.float32)
    batch, seqlen = 2, 24
    hidden = torch.randn(batch, seqlen, 8, requires_grad=True)
    kept, kept0 = sum(saved_storages(fused, hidden).values()), sum(saved_storages(unfused, hidden).values())
    u_and_delta = 2 * batch * fused.d_inner * seqlen * 4
    assert kept0 - kept >= u_and_delta, (kept0, kept)


@cpu_triton
def test_triton_whole_model_keeps_exactly_the_conv_output_delta_and_y_less(monkeypatch):
    """Live bytes after the forward (benchmarks/memory.py's exact storage count), fp32: both fused modes keep one
    (d_inner, d_state) tensor less (the unfused A = -exp(A_log) keeps exp's output for its backward beside A); the
    recomputing one also no u and delta, and no y for out_proj (run inside: the scan's backward writes y again),
    as "keep" with MBA_FUSED_OUT_PROJ_INSIDE=1; nothing else changes."""
    batch, seqlen, n_layer = 2, 9, 1
    ids = torch.randint(0, 7, (batch, seqlen), generator=torch.Generator().manual_seed(7))
    kept = {}
    for mode in ("off", "triton", "keep", "keep-out-proj-inside"):
        torch.manual_seed(0)
        if mode == "keep-out-proj-inside":
            monkeypatch.setenv("MBA_FUSED_OUT_PROJ_INSIDE", "1")
        config = MambaConfig(d_model=8, n_layer=n_layer, vocab_size=7, d_state=4, fused_inner=mode.split("-")[0])
        kept[mode] = activation_bytes(set_backend(MambaLM(config), "triton").backbone, ids)["kept"]
    exp_output = n_layer * config.d_inner * config.d_state * 4
    per_tensor = n_layer * batch * config.d_inner * seqlen * 4  # one (batch, d_inner, seqlen) fp32 tensor per layer
    assert kept["off"] - kept["triton"] == 3 * per_tensor + exp_output
    assert kept["off"] - kept["keep"] == exp_output
    assert kept["off"] - kept["keep-out-proj-inside"] == per_tensor + exp_output


@cpu_triton
def test_triton_save_every_keeps_fewer_states_same_gradients(monkeypatch):
    """MBA_FUSED_SAVE_EVERY=2: every other chunk-start state kept (seqlen 21, chunk 8: 2 of 3), the same gradients."""
    fused, unfused = mixer_pair("triton", torch.float32)
    batch, seqlen = 2, 21
    hidden = torch.randn(batch, seqlen, 8, generator=torch.Generator().manual_seed(6))
    seq_idx = packed_ids(batch, seqlen)
    kept_all = sum(saved_storages(fused, hidden).values())
    monkeypatch.setenv("MBA_FUSED_SAVE_EVERY", "2")
    assert_same(run(fused, hidden, seq_idx), run(unfused, hidden, seq_idx), 1e-6, 1e-5)
    kept_half = sum(saved_storages(fused, hidden).values())
    assert kept_all - kept_half == batch * fused.d_inner * (3 - 2) * fused.d_state * 4
    monkeypatch.setenv("MBA_FUSED_SAVE_EVERY", "-1")
    with pytest.raises(ValueError, match="MBA_FUSED_SAVE_EVERY"):
        fused(hidden)


@cpu_triton
def test_lean_keeps_every_16th_state_same_gradients(monkeypatch):
    """fused_inner="lean": as "triton" (u, delta, y recomputed) with the scan keeping every 16th chunk-start state
    (seqlen 264, chunk 8: 33 chunks, 3 kept), the unfused mixer's gradients; MBA_FUSED_SAVE_EVERY overrides 16."""
    monkeypatch.delenv("MBA_FUSED_SAVE_EVERY", raising=False)
    lean, unfused = mixer_pair("triton", torch.float32, mode="lean")
    recompute = copy.deepcopy(lean)
    recompute.config = MambaConfig(d_model=8, d_state=4, fused_inner="triton")
    batch, seqlen = 1, 264
    hidden = torch.randn(batch, seqlen, 8, generator=torch.Generator().manual_seed(8))
    assert_same(run(lean, hidden), run(unfused, hidden), 1e-6, 1e-5)
    states = batch * lean.d_inner * lean.d_state * 4  # bytes of one chunk-start state per channel
    kept, kept_all = sum(saved_storages(lean, hidden).values()), sum(saved_storages(recompute, hidden).values())
    assert kept_all - kept == (33 - 3) * states
    monkeypatch.setenv("MBA_FUSED_SAVE_EVERY", "4")
    assert kept_all - sum(saved_storages(lean, hidden).values()) == (33 - 9) * states


@pytest.mark.parametrize("case", ["s4d", "carry", "no_grad", "off", "reference_by_default", "env_off"])
def test_calls_it_cannot_take_run_unfused(case, monkeypatch):
    kw = {"ssm_layer": "S4D"} if case == "s4d" else {}
    fused, unfused = mixer_pair("reference", **kw)
    if case == "off":
        fused = unfused
    elif case == "reference_by_default":  # "triton" leaves the reference backend unfused
        fused.config = MambaConfig(d_model=8, d_state=4, fused_inner="triton")
    elif case == "env_off":
        monkeypatch.setenv("MBA_FUSED_INNER", "0")
    hidden = torch.randn(2, 11, 8, dtype=torch.float64)
    if case == "carry":
        out, _ = fused.forward_segment(hidden)
    elif case == "no_grad":
        with torch.no_grad():
            out = fused(hidden)
        assert torch.equal(out, unfused(hidden).detach())
    else:
        out = fused(hidden.requires_grad_())
    assert "MambaInnerFnBackward" not in node_names(out)


def test_fused_conv_is_causal_conv1d_only_where_the_unfused_mixer_would_run_it(monkeypatch):
    """The fused Function's conv: the package's where the ops backend resolves the conv to "cuda" and no seq_idx
    is given (the package reads seq_idx only channel-last), else the Triton conv."""
    from mamba_bio_audio import ops
    from mamba_bio_audio.kernels.causal_conv1d import triton_conv
    from mamba_bio_audio.modules.fused_inner import _CausalConv1dPackage, _conv_kernels

    like = torch.zeros(1, 4, 8)
    assert _conv_kernels("triton", like, None) is triton_conv
    monkeypatch.setattr(ops, "resolve_backend", lambda backend, op, tensor: ("cuda", None))
    assert _conv_kernels("auto", like, None) is _CausalConv1dPackage
    assert _conv_kernels("auto", like, torch.zeros(1, 8, dtype=torch.int64)) is triton_conv


def test_mamba_inner_refuses_an_xz_that_is_not_a_channel_major_product():
    from mamba_bio_audio.modules.fused_inner import mamba_inner

    m = Mamba(MambaConfig(d_model=8, d_state=4))
    xz = torch.randn(2, 2 * m.d_inner, 5)  # contiguous (batch, channels, seqlen): not a product's view
    with pytest.raises(ValueError, match="channel-major"):
        mamba_inner(xz, m.conv1d.weight.squeeze(1), m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight, m.A_log, m.D,
                    m.dt_proj.bias, dt_rank=m.dt_rank, backend="reference")


def test_out_proj_inside_from_environment(monkeypatch):
    from mamba_bio_audio import ops

    monkeypatch.delenv("MBA_FUSED_OUT_PROJ_INSIDE", raising=False)
    assert ops.fused_out_proj_inside(keep=False) and not ops.fused_out_proj_inside(keep=True)
    monkeypatch.setenv("MBA_FUSED_OUT_PROJ_INSIDE", "1")
    assert ops.fused_out_proj_inside(keep=True)
    monkeypatch.setenv("MBA_FUSED_OUT_PROJ_INSIDE", "0")
    assert not ops.fused_out_proj_inside(keep=False)
    monkeypatch.setenv("MBA_FUSED_OUT_PROJ_INSIDE", "yes")
    with pytest.raises(ValueError, match="MBA_FUSED_OUT_PROJ_INSIDE"):
        ops.fused_out_proj_inside(keep=False)


def test_config_refuses_an_unknown_mode():
    with pytest.raises(UserError, match="fused_inner"):
        MambaConfig(fused_inner="yes")


# ---- GPU -------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@cuda_triton
@pytest.mark.parametrize("mode", ["all", "keep"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("seq", [False, True])
def test_gpu_fused_matches_unfused(dtype, tol, seq, mode):
    """fp32 weights and inputs, or bf16 autocast: the fused and unfused mixers on CUDA through Triton."""
    fused, unfused = mixer_pair("triton", torch.float32, "cuda", d_model=64, d_state=16, mode=mode)
    hidden = torch.randn(3, 1000, 64, generator=torch.Generator().manual_seed(1)).cuda()
    seq_idx = packed_ids(3, 1000).cuda() if seq else None
    autocast = dtype if dtype != torch.float32 else None
    assert_same(run(fused, hidden, seq_idx, autocast), run(unfused, hidden, seq_idx, autocast), tol, tol)


@pytest.mark.gpu
@cuda_triton
@pytest.mark.parametrize("mode", ["triton", "keep"])
def test_gpu_fused_with_causal_conv1d_matches_unfused(mode):
    """backend "auto" with causal-conv1d installed: the fused Function runs the package's conv forward and
    backward (dx into in_proj's gradient buffer), as the unfused mixer runs the package's conv."""
    pytest.importorskip("causal_conv1d")
    from mamba_bio_audio.modules.fused_inner import _CausalConv1dPackage, _conv_kernels

    fused, unfused = mixer_pair("auto", torch.float32, "cuda", d_model=64, d_state=16, mode=mode)
    hidden = torch.randn(3, 1000, 64, generator=torch.Generator().manual_seed(1)).cuda()
    assert _conv_kernels("auto", hidden, None) is _CausalConv1dPackage
    assert_same(run(fused, hidden, None, torch.bfloat16), run(unfused, hidden, None, torch.bfloat16), 1e-2, 1e-2)


def peak_training_step(fused: str) -> tuple[int, torch.Tensor]:
    """(peak bytes allocated over one bf16-autocast forward + backward of a 4-layer d_model 256 LM at (4, 2048)
    on CUDA, above what was allocated before; the loss)."""
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=256, n_layer=4, vocab_size=16, fused_inner=fused)).cuda()
    set_backend(model, "triton")
    ids = torch.randint(0, 16, (4, 2049), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before, loss.detach()


@pytest.mark.gpu
@cuda_triton
def test_gpu_fused_training_step_peaks_lower():
    peak0, loss0 = peak_training_step("off")
    peak, loss = peak_training_step("triton")
    assert torch.allclose(loss, loss0, rtol=1e-3)
    # the conv output and delta, bf16, of every layer: 2 x 4 x 512 x 8192 x 2 bytes = 64 MiB of the peak
    assert peak < peak0 - 32 * 2 ** 20, (peak, peak0)
