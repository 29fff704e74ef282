#!/usr/bin/env bash
# Installs Mesa's Vulkan drivers (lavapipe: a Vulkan CPU adapter with SHADER_F16) so the wgpu
# backend's tests run in CI with `WGPU_BACKEND=vulkan`, and prints the adapter wgpu will see.
# Usage: .ci/wgpu-setup.sh   (as root, or with sudo available)
set -euo pipefail
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers
fi
ls /usr/share/vulkan/icd.d/lvp_icd*.json
echo "lavapipe installed; run the wgpu tests with WGPU_BACKEND=vulkan MP_REQUIRE_WGPU=1"
