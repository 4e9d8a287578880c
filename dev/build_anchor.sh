#!/usr/bin/env bash
# Build the side-by-side anchor (mamba_ssm 2.3.2.post1, causal-conv1d 1.7.0) on the GPU machine for sm_90 only,
# install it into /tmp/site, and leave in OUT_DIR what .anchor-xz/ holds (each wheel without its CUDA extension,
# plus the stripped extension xz-compressed) as one tar in 15 MiB parts, so that it comes back from the device:
#   (here)   mkdir -p .anchor-xz && cat .device/N/anchor/anchor-xz.tar.part-* | tar -x -C .anchor-xz
# and carry .anchor-xz/ in later calls (gpu_session.sh installs it, no build).
#
#   (here)   mkdir -p .anchor-src && cd .anchor-src && MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
#                pip download --no-deps --no-build-isolation --no-binary :all: mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0
#   (device) bash dev/build_anchor.sh SRC_DIR OUT_DIR      # gpu_session.sh step build-anchor
#
# ../shared/design/TARGETS.md: about 4 + 3 minutes with MAX_JOBS=16. The sdists' setup.py compiles for ~9
# architectures; a scratch copy keeps only compute_90 / sm_90. Never builds inside the carried repository.
set -euo pipefail
src=$1
out=$2
work=/tmp/anchor-build
rm -rf "$work" && mkdir -p "$work/wheels" "$out"
for sdist in "$src"/causal_conv1d-*.tar.gz "$src"/mamba_ssm-*.tar.gz; do
    tar xzf "$sdist" -C "$work"
done
for pkg in "$work"/causal_conv1d-* "$work"/mamba_ssm-*; do
    [ -d "$pkg" ] || continue
    # drop every -gencode pair but sm_90 (the two appends become `pass`, so if-blocks keep a body)
    python3 - "$pkg/setup.py" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
pair = re.compile(r'^(\s*)cc_flag\.append\("-gencode"\)\n\s*cc_flag\.append\("arch=compute_(\d+),code=sm_\d+"\)\n',
                  re.M)
text, n = pair.subn(lambda m: m.group(0) if m.group(2) == "90" else f"{m.group(1)}pass\n", text)
assert n >= 2 and 'arch=compute_90,code=sm_90' in text, f"{path}: the -gencode lines were not found"
open(path, "w").write(text)
print(f"{path}: kept sm_90 of {n} -gencode pairs")
PY
    t0=$(date +%s)
    (cd "$pkg" && MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-16} \
        python3 -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$work/wheels" .)
    echo "built $(basename "$pkg") in $(( $(date +%s) - t0 )) s"
done
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$work"/wheels/*.whl
# split each wheel: the extension (stripped, xz) beside the rest, in a scratch folder
xzdir=$work/anchor-xz
mkdir -p "$xzdir"
python3 - "$work/wheels" "$xzdir" <<'PY'
import pathlib, shutil, subprocess, sys, zipfile
wheels, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out / wheel.name, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename.endswith(".so") and "/" not in item.filename:
                so = out / item.filename
                so.write_bytes(src.read(item))
                if shutil.which("strip"):
                    subprocess.run(["strip", "--strip-unneeded", str(so)], check=False)  # unstripped if it fails
                size = so.stat().st_size
                if shutil.which("xz"):  # every core (python's lzma has one thread: minutes for ~100 MiB)
                    subprocess.run(["xz", "-T0", "-9", "-f", str(so)], check=True)
                else:
                    import lzma
                    (out / (item.filename + ".xz")).write_bytes(lzma.compress(so.read_bytes(), preset=9))
                    so.unlink()
                print(f"{item.filename}: {size / 2**20:.1f} MiB stripped, "
                      f"{(out / (item.filename + '.xz')).stat().st_size / 2**20:.1f} MiB xz")
            else:
                dst.writestr(item, src.read(item))
PY
# what comes back from a device call is at most 8 files of 16 MiB each: one tar of the folder, in 15 MiB parts
# (here: cat OUT_DIR/anchor-xz.tar.part-* | tar -x -C .anchor-xz)
tar -cf - -C "$xzdir" . | split -b 15m -d - "$out/anchor-xz.tar.part-"
ls -l "$out"
python3 -c "import selective_scan_cuda, causal_conv1d_cuda, mamba_ssm; print('mamba_ssm', mamba_ssm.__version__, 'imports')"
