#!/usr/bin/env bash
# OpenMPI for the data-parallel tests: mpirun and the headers rsmpi's bindings are generated
# from (bindgen needs libclang). Debian's packages; nothing else is downloaded.
set -euo pipefail
if command -v mpirun >/dev/null && command -v mpicc >/dev/null && ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
    echo "OpenMPI present: $(mpirun --version | head -1)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends libopenmpi-dev openmpi-bin libclang-dev >/dev/null
echo "OpenMPI installed: $(mpirun --version | head -1)"
