#!/usr/bin/env bash
# One UNet forward and one decoder forward: Burn (flex CPU, wgpu) vs PyTorch CPU
# on the same weights; then a whole 4-step generation with the shipped model,
# Burn flex vs diffusers; from one run. Needs Python with tools/requirements-fixtures.txt.
#   tools/bench.sh [python]       (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
cargo bench --bench forward --bench generate --no-run >/dev/null 2>&1 \
  || cargo bench --bench forward --bench generate --no-run
torch=$("$PY" tools/bench_forward.py "$DIR")
flex=$(cargo bench -q --bench forward -- flex "$DIR" 2>/dev/null)
wgpu=$(cargo bench -q --bench forward -- wgpu "$DIR" 2>/dev/null)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%s\n%s\n%s\n' "$torch" "$flex" "$wgpu"
"$PY" - "$torch" "$flex" "$wgpu" <<'PY'
import json, sys
t, *others = [json.loads(a) for a in sys.argv[1:]]
print(f"{'backend':28} {'unet ms':>9} {'x torch':>8} {'decoder ms':>11} {'x torch':>8} {'peak MB':>8}")
for r in [t, *others]:
    print(f"{r['backend'][:28]:28} {r['unet_ms']:9.1f} {r['unet_ms'] / t['unet_ms']:8.2f} "
          f"{r['decoder_ms']:11.1f} {r['decoder_ms'] / t['decoder_ms']:8.2f} {r['peak_rss_mb']:8.0f}")
PY

gen_torch=$("$PY" tools/bench_generate.py 2>/dev/null)
gen_flex=$(cargo bench -q --bench generate -- flex 2>/dev/null)
printf '%s\n%s\n' "$gen_torch" "$gen_flex"
"$PY" - "$gen_torch" "$gen_flex" <<'PY'
import json, sys
t, f = [json.loads(a) for a in sys.argv[1:]]
print(f"{'emoji-4step, 4 steps':28} {'generate ms':>12} {'x diffusers':>12} {'load ms':>9}")
for r in (t, f):
    print(f"{r['backend'][:28]:28} {r['generate_ms']:12.1f} {r['generate_ms'] / t['generate_ms']:12.2f} {r['load_ms']:9.0f}")
PY
