#!/usr/bin/env bash
# Usage:
#   ./build.sh serve   build the wasm app and serve www/ on http://127.0.0.1:8080
#   ./build.sh test    run every test (format, lints, cargo tests, wasm build, browser tests)
#   ./build.sh wasm    build www/pkg only
# Each command installs what it needs on a fresh Debian machine, idempotently.
# Environment: PORT (serve, default 8080), WASM_OPT=0 skips wasm-opt (the default for test).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")" && pwd)
cd "$ROOT"
CRATE=latent_diffusion_web
WASM_TARGET=wasm32-unknown-unknown

log() { printf '\n==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_wasm_target() {
  rustup target list --installed | grep -qx "$WASM_TARGET" || rustup target add "$WASM_TARGET"
}

# wasm-bindgen-cli must be exactly the wasm-bindgen version in Cargo.lock.
ensure_wasm_bindgen() {
  local want have
  want=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
  have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
  if [ "$have" != "$want" ]; then
    log "installing wasm-bindgen-cli $want (have: ${have:-none})"
    # No --locked: with it, 0.2.130 fails to resolve webpki-roots.
    cargo install wasm-bindgen-cli --version "$want" --force
  fi
}

# binaryen (wasm-opt) and playwright-core, pinned by package-lock.json.
ensure_npm() {
  if [ ! -x node_modules/.bin/wasm-opt ] || [ ! -d node_modules/playwright-core ] \
     || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    log "npm ci"
    npm ci --no-audit --no-fund
  fi
}

# Debian's chromium (never a downloaded browser) and mesa's lavapipe Vulkan
# driver, for browser tests and native wgpu tests.
ensure_debian() {
  local need=()
  command -v chromium >/dev/null || need+=(chromium)
  dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
}

# Clippy lints the crate while it is really compiled: clippy-driver wraps
# rustc for this crate only (`cargo clippy` does the same over `cargo check`,
# which would check every dependency a second time, natively and for wasm:
# over 8 of a cold run's minutes). CLIPPY_ARGS is how `cargo clippy -- -D
# warnings` hands its arguments to clippy-driver.
with_clippy() {
  rustup which clippy-driver >/dev/null 2>&1 || rustup component add clippy
  RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver)" \
    CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__" "$@"
}

# The threaded CPU module needs wasm32 atomics, so std must be rebuilt with
# them (-Z build-std): a std source and a compiler that allows that flag.
# rustup offers neither here (no rust-src, no nightly), Debian's security
# archive does: rustc-web, cargo-web and rust-web-src (Rust 1.96), used with
# RUSTC_BOOTSTRAP and linked by rustup's own rust-lld.
ensure_threads_toolchain() {
  local need=() p
  for p in rustc-web cargo-web rust-web-src; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
}

# www/pkg-threads: the CPU path on a rayon pool of Web Workers, without
# WebGPU (wgpu's browser handles cannot cross threads). The page loads it
# where it is cross-origin isolated. Shared memory up to wasm32's 4 GiB; the
# TLS exports are what wasm-bindgen's thread start-up calls.
build_wasm_threads() {
  ensure_threads_toolchain
  local lld flags
  lld="$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld"
  flags="-C linker=$lld -C target-feature=+simd128,+atomics,+bulk-memory,+mutable-globals"
  flags+=" -C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296"
  flags+=" -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size"
  flags+=" -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base"
  local dir="${CARGO_TARGET_DIR:-target}/threads"
  log "cargo build --features threads (std with atomics, Debian's Rust $(/usr/bin/rustc --version | cut -d' ' -f2))"
  RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 RUSTFLAGS="$flags" RUSTC_WORKSPACE_WRAPPER='' \
    /usr/bin/cargo build -Z build-std=std,panic_abort --profile wasm-release --target "$WASM_TARGET" \
    --lib --no-default-features --features threads --target-dir "$dir"
  wasm-bindgen --target web --no-typescript --out-dir www/pkg-threads \
    "$dir/$WASM_TARGET/wasm-release/$CRATE.wasm"
  optimize_wasm pkg-threads --enable-threads
}

# wasm-opt -Oz on www/$1's module (unless WASM_OPT=0), with the features
# rustc enables by default for wasm32-unknown-unknown, SIMD
# (.cargo/config.toml) and any given after the folder.
optimize_wasm() {
  local file="www/$1/${CRATE}_bg.wasm"
  shift
  [ "${WASM_OPT:-1}" != 0 ] || return 0
  log "wasm-opt -Oz $file"
  node_modules/.bin/wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
    --enable-simd "$@" "$file" -o "$file"
}

build_wasm() {
  ensure_wasm_target
  ensure_wasm_bindgen
  ensure_npm
  log "cargo build --profile wasm-release --target $WASM_TARGET"
  if [ "${LINT:-0}" = 1 ]; then
    with_clippy cargo build --profile wasm-release --target "$WASM_TARGET" --lib
  else
    cargo build --profile wasm-release --target "$WASM_TARGET" --lib
  fi
  wasm-bindgen --target web --no-typescript --out-dir www/pkg \
    "${CARGO_TARGET_DIR:-target}/$WASM_TARGET/wasm-release/$CRATE.wasm"
  optimize_wasm pkg
  # The page's default model (www/models/emoji-4step) is committed; the
  # random-weight test pipeline is copied beside it for the tests and as a
  # preset (symlinks resolved, reference outputs left out).
  rm -rf www/models/tiny-random && mkdir -p www/models/tiny-random
  tar -C tests/fixtures/pipelines/tiny -chf - --exclude='expected.*' --exclude=cases.json . \
    | tar -C www/models/tiny-random -xf -
  build_wasm_threads
  local raw gz pkg
  for pkg in pkg pkg-threads; do
    raw=$(stat -c %s "www/$pkg/${CRATE}_bg.wasm")
    gz=$(gzip -9c "www/$pkg/${CRATE}_bg.wasm" | wc -c)
    log "www/$pkg/${CRATE}_bg.wasm: $raw bytes raw, $gz bytes gzip -9"
  done
}

run_tests() {
  ensure_debian
  log "cargo fmt --check"
  cargo fmt --check
  log "cargo test --all-targets --no-run, linted by clippy -D warnings"
  with_clippy cargo test --all-targets --no-run
  log "cargo test"
  with_clippy cargo test --no-fail-fast
  # The browser tests run the release build without wasm-opt -Oz (the same
  # code; -Oz only shrinks it and took 7.6 of a CI run's minutes). `serve`
  # and `wasm` still optimise; WASM_OPT=1 ./build.sh test tests that build.
  # This build is the wasm32 clippy run too.
  WASM_OPT="${WASM_OPT:-0}" LINT=1 build_wasm
  log "browser tests (Debian chromium via playwright-core)"
  node --test tests/browser/
}

case "${1:-}" in
  serve)
    build_wasm
    exec python3 tools/serve.py www "${PORT:-8080}"
    ;;
  test) run_tests ;;
  wasm) build_wasm ;;
  *)
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
