#!/usr/bin/env bash
# Type-checks the workspace for Apple silicon macOS (aarch64-apple-darwin) on
# a Linux machine, and lints alloc-mps (the Metal backend) for that target.
# Nothing here links or runs: there is no macOS SDK on Linux.
#
# Two crates build C code in their build scripts, which `cargo check` runs:
# - alloca (under criterion, for the benches) holds one C function that needs
#   only <stddef.h> and <stdint.h>: clang compiles it for the target with its
#   own freestanding headers (gcc cannot target Darwin).
# - libmimalloc-sys compiles mimalloc, which needs the macOS SDK's headers.
#   Its build script is overridden through its `links = "mimalloc"` key (a
#   cargo feature for libraries provided from elsewhere), so the Rust side is
#   checked and mimalloc's C is not; on a Mac it compiles as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=aarch64-apple-darwin

rustup target add "$TARGET" >/dev/null
if ! command -v clang >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null
fi

export CC_aarch64_apple_darwin=clang
export CFLAGS_aarch64_apple_darwin=-ffreestanding
OVERRIDE='target.aarch64-apple-darwin.mimalloc.rustc-link-lib=["mimalloc"]'

# The Metal pieces: alloc-mps, and the toolkit's feature `metal`, linted for
# the Apple target (real code) and tested on this one (the Unsupported path).
cargo clippy -p alloc-mps --all-targets --target "$TARGET" --config "$OVERRIDE" -- -D warnings
cargo clippy -p alloc-toolkit --features metal --lib --no-deps --target "$TARGET" --config "$OVERRIDE" -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc -p alloc-mps --no-deps --target "$TARGET" --config "$OVERRIDE"
cargo test -p alloc-mps
cargo test -p alloc-toolkit --no-default-features --features metal --lib metal::

# The whole workspace, every target kind, for the Apple target.
cargo check --workspace --all-targets --target "$TARGET" --config "$OVERRIDE"
echo "aarch64-apple-darwin: the workspace type-checks; the Metal pieces lint, document and test cleanly"
