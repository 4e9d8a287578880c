"""dev/gpu_session.sh names test files and dev scripts by path: each must exist (a moved test file otherwise
turns a device call's test step into 'file or directory not found', as on 2026-12-07)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_session_paths_exist():
    script = (ROOT / "dev" / "gpu_session.sh").read_text()
    paths = sorted(set(re.findall(r"/tmp/src/((?:tests|dev)/[A-Za-z0-9_/.]+)", script)))
    assert paths, "no /tmp/src/tests or /tmp/src/dev paths found: the pattern no longer matches the script"
    missing = [p for p in paths if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, f"dev/gpu_session.sh names paths that do not exist: {missing}"


def test_sass_count_records_the_launches_of_one_fwd_bwd():
    """dev/sass_count.py --shape compiles what a launch compiles: its recorder must see every kernel of one
    fwd+bwd with the wrappers' real arguments (here without compiling: the kernels may be the interpreter's, as
    when other kernel tests imported them first under TRITON_INTERPRET=1)."""
    import importlib.util
    import inspect

    spec = importlib.util.spec_from_file_location("sass_count", ROOT / "dev" / "sass_count.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    launches = module.captured_launches((2, 32, 256))
    names = [kernel.fn.__name__ for kernel, _, _ in launches]
    # the time segments a 132-SM GPU would get at this small shape, so the summary kernels launch too
    assert {"_fwd_kernel", "_bwd_kernel", "softplus_kernel", "_fwd_summary_kernel"} <= set(names), names
    fwd, fwd_args = next((kernel, args) for kernel, args, _ in launches if kernel.fn.__name__ == "_fwd_kernel")
    by_name = dict(zip(inspect.signature(fwd.fn).parameters, fwd_args))
    assert by_name["seqlen"] == 256 and by_name["dim"] == 32 and by_name["stride_d"] == 256


def test_count_ops_counts_one_layer_of_a_training_step():
    """dev/count_ops.py: a layer's host work in one training step (forward, backward, AdamW) without a GPU. The
    counts are pinned: a change that adds launches to every layer's step (host time in eager training, #18) has
    to change them here on purpose."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("count_ops", ROOT / "dev" / "count_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    layer = module.per_layer("off", batch=1, seqlen=16)
    # the fused add + norm, conv, softplus pass and scan, forward and backward (softplus again in the backward)
    assert sum(layer["triton"].values()) == 9, layer["triton"]
    assert layer["ops"]["mm"] == 12  # in_proj, x_proj, dt_proj, out_proj: forward, and both gradients of each
    assert sum(layer["ops"].values()) <= 30, layer["ops"]


def test_count_ops_counts_a_decode_step_with_and_without_the_fused_out_proj(monkeypatch):
    """dev/count_ops.py --decode: at batch 1 a layer's decode step is the block step's two kernels plus out_proj's
    product, or the two kernels alone with out_proj inside (MBA_FUSED_OUT_PROJ_MAX_BATCH)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("count_ops", ROOT / "dev" / "count_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def launches(fused_out: str) -> int:
        monkeypatch.setenv("MBA_FUSED_OUT_PROJ_MAX_BATCH", fused_out)
        layer = module.per_layer(batch=1, decode=True)
        assert set(layer["triton"]) == {"_block_head_kernel", "_ssm_from_partials_kernel"}, layer["triton"]
        return sum(layer["triton"].values()) + sum(layer["ops"].values())

    assert launches("0") == 3 and launches("2") == 2
