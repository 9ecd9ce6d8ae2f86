#!/usr/bin/env bash
# Installs GlaucoScreen Edge.
#   ./install.sh --dev        a workstation: .venv/ in this checkout with the project (editable),
#                             training (torch, CPU) and test tools, plus Chromium for the kiosk tests
#                             and Orthanc for the sync tests when apt is available.
#   ./install.sh              a unit (Raspberry Pi OS or JetPack): system packages, a venv under
#                             /opt/glaucoscreen that sees the system's picamera2 / tensorrt, a
#                             service user with GPIO/serial/video groups, the data directory and
#                             the systemd units.
#   ./install.sh --dry-run    print what the unit install would do, change nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode=unit
dry=0
for arg in "$@"; do
  case "$arg" in
    --dev) mode=dev ;;
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

PYTHON="${PYTHON:-python3}"
PREFIX="${GLAUCOSCREEN_PREFIX:-/opt/glaucoscreen}"
DATA_DIR="${GLAUCOSCREEN_DATA_DIR:-/var/lib/glaucoscreen}"
ETC_DIR="${GLAUCOSCREEN_ETC_DIR:-/etc/glaucoscreen}"
SYSTEMD_DIR="${GLAUCOSCREEN_SYSTEMD_DIR:-/etc/systemd/system}"
SERVICE_USER="${GLAUCOSCREEN_USER:-glaucoscreen}"

run() {
  if [ "$dry" = 1 ]; then printf '+ %s\n' "$*"; else "$@"; fi
}

as_root() {
  if [ "$(id -u)" = 0 ] || [ "$dry" = 1 ]; then run "$@"; else run sudo "$@"; fi
}

have_apt() { command -v apt-get >/dev/null 2>&1; }

apt_install() {
  # Only what is missing, so a second run is quick and offline-safe.
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ "${#missing[@]}" = 0 ] && return 0
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

detect_board() {
  if [ -n "${GLAUCOSCREEN_BOARD:-}" ]; then echo "$GLAUCOSCREEN_BOARD"; return; fi
  local model=""
  [ -r /proc/device-tree/model ] && model="$(tr -d '\0' </proc/device-tree/model)"
  case "$model" in
    *"Raspberry Pi"*) echo pi ;;
    *"Jetson"*|*"NVIDIA"*) echo jetson ;;
    *) echo workstation ;;
  esac
}

dev_install() {
  cd "$here"
  if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  # torch: the CPU build is enough for training the small models and running their tests.
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" || .venv/bin/python -m pip install -q torch
  .venv/bin/python -m pip install -q -e ".[dev,train]"
  if have_apt && [ "${GLAUCOSCREEN_SKIP_APT:-0}" != 1 ]; then
    # Real parts for the tests: Chromium for the kiosk, Orthanc + DICOMweb as the PACS.
    apt_install chromium orthanc orthanc-dicomweb || echo "install.sh: could not install Chromium/Orthanc; browser and PACS tests will say so" >&2
  fi
  echo "Installed into $here/.venv. Start the unit in simulation: .venv/bin/glaucoscreen run --simulate"
}

unit_install() {
  local board; board="$(detect_board)"
  echo "Installing a GlaucoScreen unit on a $board board into $PREFIX (data: $DATA_DIR)"
  if have_apt; then
    local pkgs=(python3-venv python3-dev chromium sqlite3 libgl1)
    case "$board" in
      pi) pkgs+=(python3-picamera2 python3-lgpio) ;;
      jetson) pkgs+=(python3-libnvinfer nvidia-l4t-gstreamer) ;;
    esac
    apt_install "${pkgs[@]}"
  fi
  if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    as_root useradd --system --home-dir "$DATA_DIR" --shell /usr/sbin/nologin "$SERVICE_USER"
  fi
  for g in gpio dialout video i2c; do
    if getent group "$g" >/dev/null 2>&1 || [ "$dry" = 1 ]; then as_root usermod -aG "$g" "$SERVICE_USER"; fi
  done
  as_root install -d -m 0755 "$PREFIX"
  as_root install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$DATA_DIR"
  as_root install -d -m 0755 "$ETC_DIR"
  # --system-site-packages: picamera2 (Pi) and tensorrt (JetPack) come from the OS, not PyPI.
  as_root "$PYTHON" -m venv --system-site-packages "$PREFIX/venv"
  local extras=""
  case "$board" in pi) extras="[pi]" ;; jetson) extras="[jetson]" ;; esac
  as_root "$PREFIX/venv/bin/python" -m pip install -q "$here$extras"
  if [ ! -f "$ETC_DIR/glaucoscreen.toml" ] || [ "$dry" = 1 ]; then
    as_root install -m 0640 -o root -g "$SERVICE_USER" "$here/systemd/glaucoscreen.toml.example" "$ETC_DIR/glaucoscreen.toml"
  fi
  for unit in "$here"/systemd/*.service "$here"/systemd/*.timer; do
    [ -e "$unit" ] || continue
    as_root install -m 0644 "$unit" "$SYSTEMD_DIR/$(basename "$unit")"
  done
  if [ -d /etc/NetworkManager/dispatcher.d ] || [ "$dry" = 1 ]; then
    # sync as soon as a network comes up, not only on the timer
    as_root install -m 0755 -o root -g root "$here/systemd/90-glaucoscreen-sync" /etc/NetworkManager/dispatcher.d/90-glaucoscreen-sync
  fi
  if [ -d /etc/udev/rules.d ] || [ "$dry" = 1 ]; then
    # USB sticks mount writable by the service user, for the kiosk's export page
    as_root install -m 0644 "$here/systemd/90-glaucoscreen-usb.rules" /etc/udev/rules.d/90-glaucoscreen-usb.rules
    as_root udevadm control --reload
  fi
  as_root systemctl daemon-reload
  as_root systemctl enable --now glaucoscreen-kiosk.service
  for timer in "$here"/systemd/*.timer; do
    [ -e "$timer" ] && as_root systemctl enable --now "$(basename "$timer")"
  done
  as_root systemctl enable glaucoscreen-browser.service
  if [ "$board" = jetson ]; then
    as_root runuser -u "$SERVICE_USER" -- "$PREFIX/venv/bin/glaucoscreen" build-engines || \
      echo "install.sh: TensorRT engines not built yet; the unit runs on ONNX Runtime until they are" >&2
  fi
  echo "Done. Create the first admin: sudo runuser -u $SERVICE_USER -- $PREFIX/venv/bin/glaucoscreen user add NAME --admin"
}

if [ "$mode" = dev ]; then dev_install; else unit_install; fi
