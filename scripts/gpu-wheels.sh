#!/usr/bin/env bash
# Wheels the lent GPU machine lacks (it has torch, Triton, transformers, accelerate, safetensors;
# no diffusers, av or torchao), downloaded for its Python 3.12 on x86-64 into .whl/ (ignored by
# git). A device command then carries .whl and starts with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>"$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
# diffusers pinned as pyproject.toml pins it; pure Python, so one wheel serves any platform.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "diffusers==0.42.1" "${@}"
# PyAV (with its own FFmpeg, ~36 MB) for the recipes that write MP4 clips on the GPU machine
# (`qvgen data synthetic` in recipes/tiny_model/reproduce.sh); the version the dev venv runs.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "av==18.1.0"
# torchao for the FP8 rowwise peer of `qvgen bench e2e` (the benchmark falls back to its own
# torch._scaled_mm layer where torchao does not import against the machine's torch).
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "torchao==0.18.0" || echo "no torchao wheel"
# The worker's settings (pydantic-settings) for `python -m benchmarks.ready_time`, whose children
# start the engine as a worker does; the versions the dev venv runs.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "pydantic==2.14.4" "pydantic-core==2.50.5" \
    "pydantic-settings==2.16.3" "annotated-types==0.8.0" "typing-inspection==0.4.5" \
    "python-dotenv==1.2.4" "typing-extensions==4.16.0"
ls -la .whl
