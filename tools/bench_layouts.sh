#!/usr/bin/env bash
# One full-size UNet call at 512×512 (64×64 latents, a guidance pair) for the
# BK-SDM-Tiny and SD-Turbo layouts: Burn flex (f32 and f16) vs PyTorch CPU
# (f32) on the same random weights (examples/random_model.rs) and inputs,
# from one run. Needs Python with tools/requirements-fixtures.txt and about
# 4 GB of disk under DIR.
#   tools/bench_layouts.sh [python] [DIR]     (defaults: python3, /tmp/ldw-layouts)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
DIR=${2:-/tmp/ldw-layouts}
cargo bench --bench layout_unet --no-run >/dev/null 2>&1 || cargo bench --bench layout_unet --no-run
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
for layout in bk-sdm-tiny sd-turbo; do
  folder="$DIR/$layout"
  [ -f "$folder/unet/config.json" ] \
    || cargo run -q --release --example random_model -- "tests/fixtures/layouts/$layout" "$folder" >/dev/null
  rm -f "$folder/crate_unet_out.f32"
  f16=$(cargo bench -q --bench layout_unet -- "$folder" flex f16 2>/dev/null)
  f32=$(cargo bench -q --bench layout_unet -- "$folder" flex f32 2>/dev/null)
  torch=$("$PY" tools/bench_layout_unet.py "$folder" 2>/dev/null)
  echo "$layout"
  printf '%s\n%s\n%s\n' "$torch" "$f32" "$f16"
  "$PY" - "$torch" "$f32" "$f16" <<'PY'
import json, sys
t, *others = [json.loads(a) for a in sys.argv[1:]]
print(f"  {'backend':32} {'unet ms':>9} {'x torch':>8} {'peak MB':>8}")
for r in [t, *others]:
    print(f"  {r['backend'][:32]:32} {r['unet_ms']:9.0f} {r['unet_ms'] / t['unet_ms']:8.2f} {r['peak_rss_mb']:8.0f}")
if "crate_max_abs_diff" in t:
    print(f"  crate f32 vs diffusers: max abs diff {t['crate_max_abs_diff']:.2e} (output scale {t['output_scale']:.2f})")
PY
done
