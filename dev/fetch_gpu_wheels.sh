#!/usr/bin/env bash
# Download the cp312 manylinux wheels the GPU machine lacks (it has no package index) into .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
for pkg in biopython==1.88 soundfile==0.14.0 cffi==2.0.0 pycparser==2.23; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$pkg"
done
ls -la .whl
