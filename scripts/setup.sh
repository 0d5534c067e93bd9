#!/usr/bin/env bash
# One-command setup for a fresh Debian machine, idempotent and quick the second time:
# Debian packages, CRIU 4.x (system one if usable, else built once into a cache),
# a virtual environment in .venv with ssi installed in it.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "ssi needs root (namespaces, CRIU, cgroups): run as root, e.g. sudo make $*"

# Build dependencies of CRIU and of ssi's own C parts, and the tools the runtime calls.
PACKAGES=(
  build-essential pkg-config python3-venv iproute2 nftables
  libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler
  libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev libnftables-dev uuid-dev
  libffi-dev xz-utils
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi

# CRIU: binary path and pycriu location come back on stdout as KEY=VALUE lines.
eval "$(bash scripts/provision-criu.sh)"
ln -sf "$CRIU_BIN" "$VENV/bin/criu"
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -n "${PYCRIU_DIR:-}" ] && ! cmp -s "$PYCRIU_DIR/version.py" "$site/pycriu/version.py"; then
  rm -rf "$site/pycriu" && cp -r "$PYCRIU_DIR" "$site/pycriu"
fi

# Reinstall ssi only when what the install compiles or declares has changed.
inputs=$(cat pyproject.toml setup.py kernel_shim/_build.py ssi/jobs/init.c ssi/drmaa/_build.py \
  ssi/drmaa/drmaa.h ssi/ipc/interposer/*.c 2>/dev/null | sha256sum | cut -c1-16)
stamp="$VENV/.ssi-installed-$inputs"
if [ ! -f "$stamp" ]; then
  log "installing ssi and its dependencies into $VENV"
  "$VENV/bin/pip" install -q -e '.[test]'
  rm -f "$VENV"/.ssi-installed-* && touch "$stamp"
fi

# CRIU's lazy-pages page pipe needs more than the default 1 MiB here (see DESIGN.md).
[ "$(cat /proc/sys/fs/pipe-max-size)" -ge 4194304 ] || sysctl -qw fs.pipe-max-size=4194304
log "ready: $("$VENV/bin/criu" --version | head -1), $("$VENV/bin/python" --version)"
