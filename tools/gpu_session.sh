#!/usr/bin/env bash
# One call on a bare GPU machine: install what is missing, run the GPU tests, run the benchmarks, collect figures.
#
#   (here)   tools/fetch_gpu_wheels.sh             # once: cp312 wheels of biopython and soundfile into .whl/
#            (optional) .anchor-whl/: mamba_ssm and causal-conv1d wheels built for sm_90, for side-by-side runs
#   (device) bash tools/gpu_session.sh [what ...]  # what: tests | bench | sweep | train (default: tests bench)
#
# Never builds inside the carried repo: the package is installed from a copy under /tmp. Results go to $OUT
# (the device tool brings them back) or ./gpu-out when OUT is unset.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

# .whl: pure packages the image lacks; .anchor-whl: mamba_ssm / causal-conv1d built for sm_90 (side-by-side runs).
for wheels in .whl .anchor-whl; do
    if ls "$repo/$wheels"/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$repo/$wheels"/*.whl || exit 1
    fi
done
rm -rf /tmp/src /tmp/pkg && cp -r "$repo" /tmp/src && rm -rf /tmp/src/.git /tmp/src/.whl /tmp/src/.anchor-whl /tmp/src/.anchor
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/pkg /tmp/src >/dev/null || exit 1
export PYTHONPATH=/tmp/pkg:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PATH=/tmp/pkg/bin:$PATH
export TRITON_INTERPRET=0  # the kernel test modules default it to 1 (CPU CI); real kernels here
cd /tmp  # not the repo: tests must import the installed package

python3 - <<'PY' | tee "$out/env.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(), "SMs", torch.cuda.get_device_properties(0).multi_processor_count)
PY

what=${*:-tests bench}
status=0
for step in $what; do
    case $step in
        tests)
            python3 -m pytest -q -m gpu -p no:cacheprovider -c /tmp/src/pyproject.toml /tmp/src/tests \
                2>&1 | tee "$out/gpu_tests.txt" | tail -25
            [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
        bench)
            python3 -m mamba_bio_audio bench scan --out "$out" --backends triton,cuda,reference 2>&1 | tail -20 ;;
        sweep)
            python3 -m mamba_bio_audio.benchmarks.scan_sweep --out "$out" 2>&1 | tail -40 ;;
        *)
            echo "unknown step $step"; status=2 ;;
    esac
done
exit $status
