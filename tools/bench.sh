#!/usr/bin/env bash
# One UNet forward and one decoder forward: Burn (flex CPU, wgpu) vs PyTorch CPU
# on the same weights, from one run. Needs Python with tools/requirements-fixtures.txt.
#   tools/bench.sh [python]       (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
cargo bench --bench forward --no-run >/dev/null 2>&1 || cargo bench --bench forward --no-run
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
