#!/usr/bin/env bash
# Install the Debian packages lgnet needs on a fresh Debian 12 (bookworm) machine.
# Idempotent: packages already present are skipped, and apt-get update runs at most once.
# Usage: bash scripts/install-deps.sh   (as root, or with sudo available)
set -euo pipefail

# What each package is for:
#   qemu-system-x86    boots the test guest (scripts/qemu.ts)
#   busybox-static     the guest's userland (scripts/guest-image.sh)
#   iperf3             throughput, on the host side and inside the guest image
#   cpio, gzip         pack the guest initramfs
#   xz-utils, zstd     decompress kernel modules if a kernel ships them compressed
#   kmod               modinfo: the guest kernel's module dependencies
#   iproute2           ip netns / ip tuntap in tests
#   iputils-ping       host-side ping in tests
#   procps             ps/pgrep for people inspecting a run
#   tcpdump            reads lgnet's pcap captures in tests (and for people debugging traffic)
#   prometheus         promtool: tests check `lgnet serve --metrics-listen` output with `promtool check metrics`
#                      (its daemon is not needed: it is stopped and disabled if the package started it)
#   build-essential, python3   node-gyp builds the native addon
#   libclang-rt-14-dev libFuzzer, the engine under the coverage-guided fuzz targets (fuzz/engine)
#   dpdk-dev           dpdk-testpmd: DPDK's virtio-user as a front-end of `lgnet serve` in the tests,
#                      and DPDK's vhost back-end as the reference of `npm run bench` (bench:dpdk)
#   ca-certificates    npm over TLS
#   systemd            systemd-socket-activate: the tests start lgnet-vhost-user socket-activated (--fd 3), as a
#                      systemd socket unit does (nothing is started: only the program is used)
PKGS=(
  qemu-system-x86
  busybox-static
  iperf3
  cpio
  gzip
  xz-utils
  zstd
  iproute2
  kmod
  iputils-ping
  procps
  tcpdump
  prometheus
  build-essential
  python3
  libclang-rt-14-dev
  dpdk-dev
  ca-certificates
  systemd
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "[install-deps] all ${#PKGS[@]} packages already installed"
else
  echo "[install-deps] apt-get update"
  $SUDO apt-get update -qq >/dev/null
  echo "[install-deps] installing ${#missing[@]} package(s): ${missing[*]}"
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/lgnet-install-deps.log 2>&1 || {
    echo "[install-deps] apt-get install failed; last lines of /tmp/lgnet-install-deps.log:" >&2
    tail -n 30 /tmp/lgnet-install-deps.log >&2
    exit 1
  }
  echo "[install-deps] done"
  # The prometheus package starts its server (port 9090) where systemd runs; lgnet needs only promtool.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# The guest image fetches its kernel with `apt-get download`, which needs the package lists.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  echo "[install-deps] apt-get update (package lists missing for linux-image-cloud-amd64)"
  $SUDO apt-get update -qq >/dev/null
fi

for tool in qemu-system-x86_64 busybox iperf3 cpio ip promtool dpdk-testpmd systemd-socket-activate; do
  command -v "$tool" >/dev/null || { echo "[install-deps] missing after install: $tool" >&2; exit 1; }
done
echo "[install-deps] ok: $(qemu-system-x86_64 --version | head -n1)"
