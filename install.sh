#!/usr/bin/env bash
# Installs GlaucoScreen Edge.
#   ./install.sh --dev        a workstation: .venv/ in this checkout with the project (editable),
#                             training (torch, CPU) and test tools, plus Chromium for the kiosk tests
#                             and Orthanc for the sync tests when apt is available.
#   sudo ./install.sh         a unit (Raspberry Pi OS Bookworm on a Pi 5, or JetPack 6 on a Jetson Orin
#                             Nano), in numbered steps: system packages; the service user and its
#                             groups; a venv under /opt/glaucoscreen that sees the system's picamera2 /
#                             TensorRT; GPIO and USB device rules; the config; the TensorRT engines
#                             (Jetson); the kiosk screen in the auto-login user's desktop session; and
#                             last the systemd units, started only once everything above is in place.
#   ./install.sh --dry-run    print those steps and every command, change nothing.
# Options for a unit:
#   --board pi|jetson         the board, instead of reading it from the device tree (a dry run on a
#                             workstation needs it to show a board's install).
#   --kiosk-user NAME         the desktop user whose session shows the kiosk, instead of the display
#                             manager's auto-login user (lightdm on Raspberry Pi OS, gdm3 on JetPack).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode=unit
dry=0
board_arg=""
kiosk_user_arg=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --dev) mode=dev ;;
    --dry-run) dry=1 ;;
    --board|--kiosk-user)
      [ "$#" -ge 2 ] || { echo "install.sh: $1 needs a value" >&2; exit 2; }
      if [ "$1" = --board ]; then board_arg="$2"; else kiosk_user_arg="$2"; fi
      shift ;;
    --board=*) board_arg="${1#*=}" ;;
    --kiosk-user=*) kiosk_user_arg="${1#*=}" ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
case "$board_arg" in
  ""|pi|jetson|workstation) ;;
  *) echo "install.sh: --board takes pi, jetson or workstation, not '$board_arg'" >&2; exit 2 ;;
esac

PYTHON="${PYTHON:-python3}"
PREFIX="${GLAUCOSCREEN_PREFIX:-/opt/glaucoscreen}"
DATA_DIR="${GLAUCOSCREEN_DATA_DIR:-/var/lib/glaucoscreen}"
ETC_DIR="${GLAUCOSCREEN_ETC_DIR:-/etc/glaucoscreen}"
SYSTEMD_DIR="${GLAUCOSCREEN_SYSTEMD_DIR:-/etc/systemd/system}"
SERVICE_USER="${GLAUCOSCREEN_USER:-glaucoscreen}"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
# Where the board's own files are read from (device tree, display-manager config): / on a unit.
SYSROOT="${GLAUCOSCREEN_SYSROOT:-}"

# System packages, by board. Every name is a package of the board's own archives:
#   both: Debian bookworm (Raspberry Pi OS) and Ubuntu 22.04 jammy (JetPack 6)
#   fonts-noto-core: Noto Sans and Noto Sans Devanagari, which the kiosk's CSS names, so Hindi (and every accent
#   of French, Spanish and Swahili) shows as letters, not empty boxes
COMMON_PKGS=(python3-venv python3-dev sqlite3 curl libgl1 fonts-noto-core)
#   Raspberry Pi OS Bookworm: picamera2, lgpio and Chromium come from Raspberry Pi's own archive
#   (archive.raspberrypi.com, bookworm), numpy from Debian's (1.24, which picamera2's compiled parts need).
PI_PKGS=(python3-picamera2 python3-lgpio python3-numpy chromium-browser)
#   JetPack 6: TensorRT's Python bindings and the Argus GStreamer elements from NVIDIA's L4T archive;
#   a C++ compiler for pycuda's build; WebKitGTK from Ubuntu for the kiosk screen, because Ubuntu 22.04
#   has no Chromium package (its chromium-browser only installs the snap, which fails on JetPack 6).
JETSON_PKGS=(nvidia-l4t-gstreamer python3-libnvinfer build-essential python3-gi gir1.2-gstreamer-1.0 gir1.2-gtk-3.0 gir1.2-webkit2-4.1)
#   pycuda compiles against the CUDA toolkit: where its nvcc is missing, JetPack's own meta-package brings it.
JETSON_CUDA_PKGS=(nvidia-jetpack)

step_no=0
step() {
  step_no=$((step_no + 1))
  printf '== %d. %s\n' "$step_no" "$*"
}

run() {
  if [ "$dry" = 1 ]; then printf '+ %s\n' "$*"; else "$@"; fi
}

as_root() {
  if [ "$(id -u)" = 0 ] || [ "$dry" = 1 ]; then run "$@"; else run sudo "$@"; fi
}

warn() { echo "install.sh: $*" >&2; }

have_apt() { command -v apt-get >/dev/null 2>&1; }

apt_install() {
  # Only what is missing, so a second run is quick and offline-safe. A dry run cannot know what the
  # board already has, so it lists every package.
  local missing=()
  if [ "$dry" = 1 ]; then
    missing=("$@")
  else
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  fi
  [ "${#missing[@]}" = 0 ] && return 0
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

detect_board() {
  if [ -n "$board_arg" ]; then echo "$board_arg"; return; fi
  if [ -n "${GLAUCOSCREEN_BOARD:-}" ]; then echo "$GLAUCOSCREEN_BOARD"; return; fi
  local model=""
  [ -r "$SYSROOT/proc/device-tree/model" ] && model="$(tr -d '\0' <"$SYSROOT/proc/device-tree/model")"
  case "$model" in
    *"Raspberry Pi"*) echo pi ;;
    *"Jetson"*|*"NVIDIA"*) echo jetson ;;
    *) echo workstation ;;
  esac
}

autologin_user() {
  # The user the display manager logs in by itself: its session owns the screen.
  local f u
  # Raspberry Pi OS: lightdm, [Seat:*] autologin-user= (raspi-config's "Desktop Autologin")
  for f in "$SYSROOT"/etc/lightdm/lightdm.conf "$SYSROOT"/etc/lightdm/lightdm.conf.d/*.conf; do
    [ -r "$f" ] || continue
    u="$(sed -n 's/^[[:space:]]*autologin-user[[:space:]]*=[[:space:]]*\([^[:space:]#]*\).*/\1/p' "$f" | tail -n 1)"
    if [ -n "$u" ]; then echo "$u"; return; fi
  done
  # Ubuntu (JetPack): gdm3, [daemon] AutomaticLoginEnable=true and AutomaticLogin=
  f="$SYSROOT/etc/gdm3/custom.conf"
  if [ -r "$f" ] && grep -Eiq '^[[:space:]]*AutomaticLoginEnable[[:space:]]*=[[:space:]]*true' "$f"; then
    sed -n 's/^[[:space:]]*AutomaticLogin[[:space:]]*=[[:space:]]*\([^[:space:]#]*\).*/\1/p' "$f" | tail -n 1
  fi
}

home_of() {
  local home
  home="$(getent passwd "$1" | cut -d: -f6)"
  echo "${home:-/home/$1}"
}

append_user_line() {
  # append_user_line USER FILE LINE: add LINE to FILE (and FILE's folder) as USER, once.
  local user="$1" file="$2" line="$3"
  if [ "$dry" = 1 ]; then printf '+ as %s: append to %s: %s\n' "$user" "$file" "$line"; return; fi
  runuser -u "$user" -- mkdir -p "$(dirname "$file")"
  # shellcheck disable=SC2016 # $1 and $2 are the inner shell's
  runuser -u "$user" -- sh -c 'grep -qxF -- "$2" "$1" 2>/dev/null || printf "%s\n" "$2" >>"$1"' sh "$file" "$line"
}

wayfire_autostart() {
  # wayfire_autostart USER FILE COMMAND: an [autostart] entry in an existing wayfire.ini, once.
  local user="$1" file="$2" line="glaucoscreen = $3"
  if [ "$dry" = 1 ]; then printf '+ as %s: in %s [autostart]: %s\n' "$user" "$file" "$line"; return; fi
  # shellcheck disable=SC2016 # $1 and $2 are the inner shell's
  runuser -u "$user" -- sh -c '
    grep -qxF -- "$2" "$1" && exit 0
    if grep -q "^\[autostart\]" "$1"; then sed -i "/^\[autostart\]/a $2" "$1"
    else printf "\n[autostart]\n%s\n" "$2" >>"$1"; fi' sh "$file" "$line"
}

write_user_file() {
  # write_user_file USER FILE < CONTENT: FILE and its folder owned by USER, as a desktop expects.
  local user="$1" file="$2" content
  content="$(cat)"
  if [ "$dry" = 1 ]; then printf '+ as %s: write %s\n' "$user" "$file"; printf '%s\n' "$content" | sed 's/^/|   /'; return; fi
  runuser -u "$user" -- mkdir -p "$(dirname "$file")"
  printf '%s\n' "$content" | runuser -u "$user" -- tee "$file" >/dev/null
}

jetson_gpio_rules() {
  # Jetson.GPIO ships its udev rules inside the package (NVIDIA's README: copy them to rules.d).
  if [ "$dry" = 1 ]; then echo "<Jetson.GPIO in $PREFIX/venv>/Jetson/GPIO/99-gpio.rules"; return; fi
  "$PREFIX/venv/bin/python" -c 'import importlib.util, os
spec = importlib.util.find_spec("Jetson.GPIO")
print(os.path.join(list(spec.submodule_search_locations)[0], "99-gpio.rules"))'
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
    # Real parts for the tests: Chromium for the kiosk (with the Noto fonts its pages name), Orthanc + DICOMweb as the PACS, gcc to build the bind that keeps that Orthanc on 127.0.0.1 (tests/loopback_bind.c).
    apt_install chromium fonts-noto-core orthanc orthanc-dicomweb gcc || echo "install.sh: could not install Chromium/Orthanc; browser and PACS tests will say so" >&2
  fi
  echo "Installed into $here/.venv. Start the unit in simulation: .venv/bin/glaucoscreen run --simulate"
}

unit_install() {
  local board kiosk_user
  board="$(detect_board)"
  if [ "$dry" != 1 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: installing a unit changes the system: run it with sudo (or see --dry-run)" >&2
    exit 1
  fi
  kiosk_user="${kiosk_user_arg:-$(autologin_user)}"
  echo "Installing a GlaucoScreen unit on a $board board into $PREFIX (data: $DATA_DIR)"

  step "system packages"
  if have_apt || [ "$dry" = 1 ]; then
    local pkgs=("${COMMON_PKGS[@]}")
    case "$board" in
      pi) pkgs+=("${PI_PKGS[@]}") ;;
      jetson) pkgs+=("${JETSON_PKGS[@]}") ;;
    esac
    apt_install "${pkgs[@]}"
    if [ "$board" = jetson ]; then
      if [ "$dry" = 1 ]; then
        printf '+ %s\n' "test -x $CUDA_HOME/bin/nvcc || apt-get install -y -q --no-install-recommends ${JETSON_CUDA_PKGS[*]}"
      elif [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
        apt_install "${JETSON_CUDA_PKGS[@]}"
      fi
    fi
  fi

  step "service user $SERVICE_USER and its groups"
  if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    as_root useradd --system --home-dir "$DATA_DIR" --shell /usr/sbin/nologin "$SERVICE_USER"
  fi
  # The kiosk unit asks for SupplementaryGroups=gpio dialout video and systemd does not start it when
  # one is missing. Raspberry Pi OS has a gpio group; JetPack has none until it is made (Jetson.GPIO's
  # setup: groupadd -f -r gpio).
  as_root groupadd -f -r gpio
  for g in gpio dialout video i2c; do
    if getent group "$g" >/dev/null 2>&1 || [ "$dry" = 1 ]; then as_root usermod -aG "$g" "$SERVICE_USER"; fi
  done

  step "Python environment in $PREFIX/venv"
  as_root install -d -m 0755 "$PREFIX" "$PREFIX/bin"
  as_root install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$DATA_DIR"
  as_root install -d -m 0755 "$ETC_DIR"
  # --system-site-packages: picamera2 (Pi) and tensorrt (JetPack) come from the OS, not PyPI.
  as_root "$PYTHON" -m venv --system-site-packages "$PREFIX/venv"
  case "$board" in
    # [pi] holds numpy below 2: apt's picamera2 and simplejpeg are compiled against Bookworm's numpy 1.24
    # and fail to import under numpy 2 ("numpy.dtype size changed"), which the newest OpenCV wheel pulls in.
    pi) as_root "$PREFIX/venv/bin/python" -m pip install -q "${here}[pi]" ;;
    # pycuda is built here and its build looks for CUDA's nvcc on PATH (or under CUDA_ROOT).
    jetson) as_root env PATH="$CUDA_HOME/bin:$PATH" CUDA_ROOT="$CUDA_HOME" "$PREFIX/venv/bin/python" -m pip install -q "${here}[jetson]" ;;
    *) as_root "$PREFIX/venv/bin/python" -m pip install -q "$here" ;;
  esac

  step "device rules: GPIO, USB sticks, network"
  if [ "$board" = jetson ]; then
    # Jetson.GPIO's rules give the gpio group the sysfs GPIO and PWM files; ours adds the character
    # devices (/dev/gpiochip*) that Jetson.GPIO 2.1 drives on JetPack 6.
    as_root install -m 0644 "$(jetson_gpio_rules)" /etc/udev/rules.d/99-gpio.rules
    as_root install -m 0644 "$here/systemd/90-glaucoscreen-gpio.rules" /etc/udev/rules.d/90-glaucoscreen-gpio.rules
  fi
  if [ -d /etc/udev/rules.d ] || [ "$dry" = 1 ]; then
    # USB sticks mount writable by the service user, for the kiosk's export page
    as_root install -m 0644 "$here/systemd/90-glaucoscreen-usb.rules" /etc/udev/rules.d/90-glaucoscreen-usb.rules
    as_root udevadm control --reload
    [ "$board" = jetson ] && as_root udevadm trigger --subsystem-match=gpio --subsystem-match=pwm --action=add
  fi
  if [ -d /etc/NetworkManager/dispatcher.d ] || [ "$dry" = 1 ]; then
    # sync as soon as a network comes up, not only on the timer
    as_root install -m 0755 -o root -g root "$here/systemd/90-glaucoscreen-sync" /etc/NetworkManager/dispatcher.d/90-glaucoscreen-sync
  fi

  step "configuration in $ETC_DIR"
  if [ ! -f "$ETC_DIR/glaucoscreen.toml" ] || [ "$dry" = 1 ]; then
    as_root install -m 0640 -o root -g "$SERVICE_USER" "$here/systemd/glaucoscreen.toml.example" "$ETC_DIR/glaucoscreen.toml"
  fi

  if [ "$board" = jetson ]; then
    step "TensorRT engines, built before the kiosk starts"
    as_root runuser -u "$SERVICE_USER" -- "$PREFIX/venv/bin/glaucoscreen" build-engines || \
      warn "some TensorRT engines did not build (said above); the kiosk tries them again at its start, runs without any that fail, and its Models page names them"
  fi

  step "kiosk screen in the desktop session of ${kiosk_user:-the auto-login user}"
  # The browser runs inside the session that owns the display, started by that session's own autostart
  # (as Raspberry Pi's kiosk guide does), never as a system service without WAYLAND_DISPLAY/DISPLAY.
  local engine=chromium
  [ "$board" = jetson ] && engine=webkit
  as_root install -m 0755 "$here/systemd/glaucoscreen-browser" "$PREFIX/bin/glaucoscreen-browser"
  if [ "$engine" = webkit ]; then
    as_root install -m 0755 "$here/systemd/glaucoscreen-webkit-kiosk" "$PREFIX/bin/glaucoscreen-webkit-kiosk"
  fi
  if [ -e "$SYSTEMD_DIR/glaucoscreen-browser.service" ]; then
    # an older install ran the browser as a system service, where it never reached the screen
    as_root systemctl disable --now glaucoscreen-browser.service || true
    as_root rm -f "$SYSTEMD_DIR/glaucoscreen-browser.service"
  fi
  local launch="$PREFIX/bin/glaucoscreen-browser $engine"
  if [ -z "$kiosk_user" ]; then
    warn "no auto-login user found, so nothing shows the kiosk on the screen yet. Turn on desktop auto-login"
    warn "(Raspberry Pi OS: sudo raspi-config nonint do_boot_behaviour B4; JetPack: AutomaticLoginEnable=true and"
    warn "AutomaticLogin=NAME in /etc/gdm3/custom.conf) and run this again, or name the user: --kiosk-user NAME"
  else
    local home; home="$(home_of "$kiosk_user")"
    if [ "$board" = pi ]; then
      # labwc, Bookworm's desktop since late 2024
      append_user_line "$kiosk_user" "$home/.config/labwc/autostart" "$launch &"
      # wayfire, Bookworm's first desktop: only where the user has its config (a new one would replace all of it)
      if [ -f "$home/.config/wayfire.ini" ] || [ "$dry" = 1 ]; then
        wayfire_autostart "$kiosk_user" "$home/.config/wayfire.ini" "$launch"
      fi
    fi
    # XDG autostart: GNOME on JetPack, and the X11 (LXDE) desktop on a Pi. Where two of these start the
    # launcher, it keeps one browser per session.
    write_user_file "$kiosk_user" "$home/.config/autostart/glaucoscreen-browser.desktop" <<EOF
[Desktop Entry]
Type=Application
Name=GlaucoScreen kiosk
Comment=The unit's touchscreen: the GlaucoScreen kiosk, full screen
Exec=$launch
Terminal=false
NoDisplay=true
X-GNOME-Autostart-enabled=true
EOF
  fi

  step "systemd units, then start"
  for unit in "$here"/systemd/*.service "$here"/systemd/*.timer; do
    [ -e "$unit" ] || continue
    as_root install -m 0644 "$unit" "$SYSTEMD_DIR/$(basename "$unit")"
  done
  as_root systemctl daemon-reload
  as_root systemctl enable --now glaucoscreen-kiosk.service
  for timer in "$here"/systemd/*.timer; do
    [ -e "$timer" ] && as_root systemctl enable --now "$(basename "$timer")"
  done
  echo "Done. Create the first admin: sudo runuser -u $SERVICE_USER -- $PREFIX/venv/bin/glaucoscreen user add NAME --admin"
  [ -n "$kiosk_user" ] && echo "The kiosk shows on the screen from $kiosk_user's next login (reboot the unit)."
  return 0
}

if [ "$mode" = dev ]; then dev_install; else unit_install; fi
