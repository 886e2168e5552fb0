#!/usr/bin/env bash
# Install what running tvm-aarch64 builds on an x86-64 Debian/Ubuntu machine needs (idempotent):
#   apt:  g++-aarch64-linux-gnu (cross compiler + aarch64 glibc/libstdc++), qemu-user (qemu-aarch64)
#   pip:  the aarch64 wheels of the installed apache-tvm / apache-tvm-ffi, from which
#         libtvm_runtime.so, libtvm_ffi.so and the tvm-ffi headers are extracted into
#         ${GRAPHOPT_AARCH64_HOME:-~/.cache/graphopt/aarch64}
# Usage: backends/tvm/edge/install_toolchain.sh [PYTHON]   (PYTHON: the venv's python, default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY="${1:-.venv/bin/python}"

missing=()
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user)
[ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] || missing+=(libc6-dev-arm64-cross)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

"$PY" -m graphopt.backends.tvm.edge
