#!/usr/bin/env bash
# Issue 11's GPU measurement, prepared for a session that is lent a GPU
# machine (`device` `run`: 15 minutes in all, so one call): Burn's wgpu
# backend natively (Vulkan) against PyTorch CUDA on the same weights and
# inputs, f32 and f16, for tools/bench.sh's small UNet and decoder and for a
# full-size UNet at 512² (BK-SDM-Tiny's layout, a guidance pair).
#
#   PYTHON=/path/to/python tools/gpu_bench.sh prepare
#       here: the two release benches (stripped, xz), the diffusers wheel
#       unpacked (xz; the device image has PyTorch, not diffusers) and
#       Vulkan's loader into .gpu/ (git-ignored locally), ~11 MB: with the
#       repository (~54 MB) under the 64 MiB a call may carry
#   tools/gpu_bench.sh run
#       there, with carry [".gpu"]: JSON lines, also in $OUT/gpu_bench.log
#
# `run` works on a machine without a GPU too (wgpu takes whatever adapter it
# finds, PyTorch the CPU); QUICK=1 skips the full-size UNet.
set -euo pipefail
cd "$(dirname "$0")/.."

prepare() {
  grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >>.git/info/exclude
  rm -rf .gpu && mkdir -p .gpu/bin .gpu/whl
  local b
  for b in forward layout_unet; do
    cp "$(cargo bench --bench "$b" --no-run 2>&1 | grep -o '(/[^)]*)' | tr -d '()' | tail -1)" ".gpu/bin/$b"
  done
  strip .gpu/bin/*
  tar -C .gpu/bin -cf - forward layout_unet | xz -9e >.gpu/bin.tar.xz
  "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp -d .gpu/whl diffusers==0.42.1
  (cd .gpu/whl && unzip -q ./*.whl && rm ./*.whl && tar -cf - . | xz -9e >../site.tar.xz)
  local o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  mkdir -p /tmp/amd64/partial
  # shellcheck disable=SC2086
  apt-get $o update -qq
  # shellcheck disable=SC2086
  (cd .gpu && apt-get $o download -qq libvulkan1 2>/dev/null)
  rm -rf .gpu/bin .gpu/whl
  du -b .gpu/*
}

run() {
  local log="${OUT:-/tmp}/gpu_bench.log" work=/tmp/ldw-gpu
  rm -rf "$work" && mkdir -p "$work/bin" "$work/site"
  for f in .gpu/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done
  ldconfig 2>/dev/null || true
  local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
  xz -dc .gpu/bin.tar.xz | tar -C "$work/bin" -xf -
  xz -dc .gpu/site.tar.xz | tar -C "$work/site" -xf -
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
  local py=${PYTHON:-python3} dev
  dev=$("$py" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
  : >"$log"
  say() { echo "$1" | tee -a "$log"; }
  say "{\"machine\": \"$(nproc) cores, $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo 'no GPU')\", \"date\": \"$(date -u +%F)\"}"
  local p
  for p in f32 f16; do
    say "$("$py" tools/bench_forward.py "$work/small" "$dev" "$p" 2>/dev/null)"
    say "$("$work/bin/forward" wgpu "$work/small" "$p" 2>/dev/null)"
  done
  [ "${QUICK:-0}" = 1 ] && return
  # The full-size folder: BK-SDM-Tiny's published UNet config, diffusers'
  # own random initialisation, saved in f32 (both sides read this file).
  "$py" - "$work/bk-sdm-tiny" <<'PY'
import json, os, sys, torch
from diffusers import UNet2DConditionModel
torch.manual_seed(0)
out = sys.argv[1]
config = json.load(open("tests/fixtures/layouts/bk-sdm-tiny/unet/config.json"))
UNet2DConditionModel.from_config(config).save_pretrained(os.path.join(out, "unet"))
PY
  for p in f32 f16; do
    rm -f "$work/bk-sdm-tiny/crate_unet_out.f32"
    say "$("$work/bin/layout_unet" "$work/bk-sdm-tiny" wgpu "$p" 2>/dev/null)"
    say "$("$py" tools/bench_layout_unet.py "$work/bk-sdm-tiny" "$dev" "$p" 2>/dev/null)"
  done
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
