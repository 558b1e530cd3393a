#!/usr/bin/env bash
# Build (once) and install a portable llama-cpp-python wheel into a venv.
#
#   bash scripts/llama_wheel.sh .venv            # build if missing, then install
#   bash scripts/llama_wheel.sh .venv --print-key
#
# llama.cpp's default build is -march=native (GGML_NATIVE=ON): a wheel built on one CPU crashes on another, and
# on CPUs that advertise AMX it crashes on the build machine too (SIGILL at `tilezero`). This build is the fixed
# x86-64 baseline every supported CPU runs: AVX2, FMA, F16C, BMI2; no AVX-512, no AMX.
#
# pip's wheel cache keys a built wheel by its sdist only (not by CMAKE_ARGS, nor by the CPU that built it), so this
# wheel is built with --no-cache-dir into a project-local wheelhouse whose folder name is a hash of the version,
# the flags, the Python tag and the compiler: a wheel there was built with exactly these flags, whatever machine
# built it. CASCADE_WHEELHOUSE moves the wheelhouse (the container image build points it at a copy).
set -euo pipefail

VENV=${1:?usage: bash scripts/llama_wheel.sh VENV_DIR [--print-key]}
VERSION=0.3.36
FLAGS="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "llama_wheel.sh: $PY not found (create the venv first)" >&2; exit 1; }

pytag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
cc_version=$(${CC:-cc} --version | head -n 1)
key=$(printf '%s\n' "$VERSION" "$FLAGS" "$pytag" "$cc_version" "$(uname -m)" | sha256sum | cut -c1-16)
house=${CASCADE_WHEELHOUSE:-$ROOT/.wheelhouse}/llama-cpp-python-$VERSION-$key
if [ "${2:-}" = "--print-key" ]; then echo "$house"; exit 0; fi

wheel=$(ls "$house"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    echo "building llama-cpp-python $VERSION (portable: AVX2/FMA/F16C, no AVX-512/AMX) into $house; ~6 min on 2 cores"
    tmp="$house.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    start=$(date +%s)
    CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        "$PY" -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -w "$tmp"
    printf 'version=%s\nflags=%s\npython=%s\ncompiler=%s\nbuilt_on=%s\nbuild_seconds=%s\n' "$VERSION" "$FLAGS" \
        "$pytag" "$cc_version" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)" \
        "$(($(date +%s) - start))" > "$tmp/BUILD_INFO"
    rm -rf "$house" && mv "$tmp" "$house"
    wheel=$(ls "$house"/llama_cpp_python-"$VERSION"-*.whl | head -n 1)
fi
# --force-reinstall: a llama-cpp-python already in the venv may be a native build from pip's cache.
"$PY" -m pip install -q --no-deps --no-index --force-reinstall "$wheel"
echo "llama-cpp-python $VERSION installed from $wheel"
