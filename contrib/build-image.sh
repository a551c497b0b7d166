#!/usr/bin/env bash
# Builds dbwarden's static binary (x86_64-unknown-linux-musl) and assembles the
# container image localhost/dbwarden:latest from it (FROM scratch: nothing is pulled).
#
#   contrib/build-image.sh                 # podman (ENGINE=docker for Docker)
#   IMAGE=localhost/dbwarden:dev contrib/build-image.sh
#
# Needs rustup (for the musl target) and a C compiler for musl (Debian: musl-tools, for
# the bundled SQLite and ring); both are installed when missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
image=${IMAGE:-localhost/dbwarden:latest}
engine=${ENGINE:-podman}

rustup target list --installed | grep -qx "$target" || rustup target add "$target"
if ! command -v musl-gcc >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
  else
    echo "musl-gcc is missing: install Debian's musl-tools" >&2
    exit 69
  fi
fi

revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# No debug info and no symbols in the image: panics still say where (file and line).
CC_x86_64_unknown_linux_musl=musl-gcc \
  CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build --release --locked --target "$target" --bin dbwarden

binary="target/$target/release/dbwarden"
if ldd "$binary" 2>&1 | grep -q "=>"; then
  echo "$binary is not static" >&2
  exit 70
fi

# Podman's default runtime (crun) fails in some sandboxes; runc works everywhere.
runtime=()
if [ "$engine" = podman ] && command -v runc >/dev/null; then
  runtime=(--runtime runc)
fi
# Docker's image format: the OCI one has no HEALTHCHECK.
format=()
[ "$engine" = podman ] && format=(--format docker)
"$engine" "${runtime[@]}" build "${format[@]}" -f Containerfile \
  --label "org.opencontainers.image.revision=$revision" \
  --label "org.opencontainers.image.version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)" \
  -t "$image" .
"$engine" "${runtime[@]}" image inspect "$image" --format '{{.Size}}' |
  awk -v img="$image" '{ printf "%s: %.1f MB\n", img, $1 / 1e6 }'
