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
