#!/usr/bin/env bash
# Prints CRIU_BIN=... and PYCRIU_DIR=... for a usable CRIU >= 3.19.
# Uses the system criu when `criu check` passes; otherwise builds CRIU 4.1.1 (with our
# patches from packaging/criu/) once into a cache and reuses it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

CRIU_VERSION=4.1.1
CRIU_SHA256=f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
CACHE=${SSI_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ssi}
log() { printf '\033[1m[criu]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[criu] error:\033[0m %s\n' "$*" >&2; exit 1; }

version_ok() {  # $1: "Version: X.Y[.Z]" line
  local v; v=$(sed -n 's/^Version: *//p' <<<"$1")
  [ -n "$v" ] && [ "$(printf '%s\n3.19\n' "$v" | sort -V | head -1)" = 3.19 ]
}

sys=$(command -v criu || true)
if [ -n "$sys" ] && [ "$sys" != "$PWD/.venv/bin/criu" ] && version_ok "$("$sys" --version 2>/dev/null)" \
   && "$sys" check >/dev/null 2>&1 && python3 -c 'import pycriu' 2>/dev/null; then
  echo "CRIU_BIN=$sys"
  echo "PYCRIU_DIR=$(python3 -c 'import os, pycriu; print(os.path.dirname(pycriu.__file__))')"
  exit 0
fi

patches_sum=$(cat packaging/criu/*.patch | sha256sum | cut -c1-12)
dest="$CACHE/criu-$CRIU_VERSION-$patches_sum"
if [ ! -x "$dest/criu/criu" ]; then
  log "building CRIU $CRIU_VERSION into $dest (the system has no usable CRIU >= 3.19)"
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  tarball="$CACHE/criu_$CRIU_VERSION.orig.tar.xz"
  if ! echo "$CRIU_SHA256  $tarball" | sha256sum -c --quiet >/dev/null 2>&1; then
    # Debian trixie carries 4.1.1; point a private apt configuration at its sources,
    # derived from this machine's own Debian mirror (never a host of our choosing).
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || die "cannot find a Debian mirror in /etc/apt: install CRIU >= 3.19 yourself and put it on PATH"
    mkdir -p "$work/lists/partial" "$CACHE"
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$uri" > "$work/src.sources"
    apt_opts=(-o "Dir::Etc::SourceList=$work/src.sources" -o Dir::Etc::SourceParts=/nonexistent
              -o "Dir::State::Lists=$work/lists" -o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" update -qq >&2
    # The .dsc and debian.tar.xz answer 404 here; the upstream tarball is all we need.
    (cd "$work" && apt-get "${apt_opts[@]}" source --download-only criu >/dev/null 2>&1 || true)
    [ -f "$work/criu_$CRIU_VERSION.orig.tar.xz" ] || die "could not download criu_$CRIU_VERSION.orig.tar.xz from Debian's sources"
    echo "$CRIU_SHA256  $work/criu_$CRIU_VERSION.orig.tar.xz" | sha256sum -c --quiet >&2 \
      || die "criu_$CRIU_VERSION.orig.tar.xz has the wrong sha256"
    mv "$work/criu_$CRIU_VERSION.orig.tar.xz" "$tarball"
  fi
  tar -C "$work" -xf "$tarball"
  src="$work/criu-$CRIU_VERSION"
  for p in packaging/criu/*.patch; do patch -s -d "$src" -p1 < "$p"; done
  make -C "$src" -j"$(nproc)" criu lib >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log" >&2; die "CRIU build failed (log above)"; }
  rm -rf "$dest"; mkdir -p "$dest/criu"
  cp "$src/criu/criu" "$dest/criu/criu"
  cp -r "$src/lib/pycriu" "$dest/pycriu"
  find "$dest/pycriu" -name 'Makefile' -delete
fi
"$dest/criu/criu" check >/dev/null 2>&1 \
  || die "$dest/criu/criu check fails on this kernel: $("$dest/criu/criu" check 2>&1 | tail -1)"
echo "CRIU_BIN=$dest/criu/criu"
echo "PYCRIU_DIR=$dest/pycriu"
