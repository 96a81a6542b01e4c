#!/usr/bin/env bash
# Installs what the station needs from Debian (12 "bookworm"), skipping apt entirely when all is there.
# Run as root (or with sudo available). Python packages come from pyproject.toml, not from here.
set -euo pipefail

packages=(
  python3 python3-venv python3-pip           # the station's own virtual environment
  mosquitto mosquitto-clients openssl        # the local cloud (broker + dynamic security) and cert checks
  softhsm2                                   # PKCS#11 token for CA keys (tests use it; real HSMs work the same)
  binutils                                   # ar: the tests check certs.ar trust stores against GNU ar
  postgresql                                 # the factory database: tests run a server of their own (initdb)
  libusb-1.0-0                               # pyusb's backend: boards in USB DFU mode
  libegl1 libgl1 libglx0 libfontconfig1 libfreetype6 libxkbcommon0 libglib2.0-0 libdbus-1-3
  libx11-6 libxcb1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0
  libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libxcb-xkb1
  fonts-dejavu-core                          # Qt needs a font to draw text, offscreen too
  xvfb xauth                                 # the window without a display: make demo, make screenshots
)

# node + npm for the tests' particle-cli (tests/tools/particle-cli); a Node.js from elsewhere (nodesource) will do
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

particle_cli() {
  local dir
  dir="$(dirname "$0")/../tests/tools/particle-cli"
  [ -x "$dir/node_modules/.bin/particle" ] && return 0
  echo "setup: installing particle-cli for the tests into $dir (npm)"
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error
}

if [ ${#missing[@]} -eq 0 ]; then
  particle_cli
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
else
  SUDO=
fi
echo "setup: installing from Debian: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# the packaged broker is not ours to run: the station starts its own on loopback when it needs one
if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
  $SUDO systemctl disable --now mosquitto || true
fi
# likewise the packaged PostgreSQL cluster: a factory runs its own server, the tests start theirs
if command -v systemctl >/dev/null && systemctl is-active --quiet postgresql 2>/dev/null; then
  $SUDO systemctl disable --now postgresql || true
fi
particle_cli
