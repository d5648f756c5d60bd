#!/usr/bin/env bash
# Build lgnet's test guest: the Debian cloud kernel plus a busybox-static initramfs carrying iperf3.
#
# Nothing is installed system-wide: the kernel package is fetched with `apt-get download` and unpacked
# with `dpkg -x` under .cache/guest/. busybox and iperf3 (and iperf3's shared libraries, resolved with
# ldd) are copied from the host, which scripts/install-deps.sh provides.
#
# Output (paths relative to the repository root):
#   .cache/guest/vmlinuz             the kernel
#   .cache/guest/initramfs.cpio.gz   the initramfs (init = scripts/guest/init)
#   .cache/guest/image.json          manifest read by scripts/qemu.ts
#
# Idempotent: the kernel .deb is cached by version and the initramfs is rebuilt only when one of its
# inputs changes (this script, the init script, the kernel, busybox, iperf3). Use --force to rebuild.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LGNET_GUEST_CACHE:-$ROOT/.cache/guest}"
INIT_SRC="$ROOT/scripts/guest/init"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

log() { echo "[guest-image] $*"; }
die() { echo "[guest-image] ERROR: $*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg dpkg-deb cpio gzip ldd modinfo sha256sum; do
  command -v "$tool" >/dev/null || die "missing tool '$tool' (run scripts/install-deps.sh)"
done
BUSYBOX="$(command -v busybox || true)"
IPERF3="$(command -v iperf3 || true)"
[ -n "$BUSYBOX" ] || die "busybox not found (apt-get install busybox-static, or run scripts/install-deps.sh)"
[ -n "$IPERF3" ] || die "iperf3 not found (run scripts/install-deps.sh)"
# The initramfs has no shared libraries for busybox: it must be the static build.
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "$BUSYBOX is dynamically linked; install busybox-static (scripts/install-deps.sh)"
fi
[ -f "$INIT_SRC" ] || die "missing $INIT_SRC"

mkdir -p "$CACHE/debs"

# --- 1. Kernel package: resolve the versioned package behind linux-image-cloud-amd64 ---------------
KPKG=""
if KDEPS="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null)"; then
  KPKG="$(printf '%s\n' "$KDEPS" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
fi
if [ -z "$KPKG" ]; then
  # No package lists (apt-get update never ran) or no network: fall back to a kernel already cached.
  KPKG="$(ls "$CACHE/debs" 2>/dev/null | sed -n 's/^\(linux-image-[0-9][^_]*-cloud-amd64\)_.*\.deb$/\1/p' | sort -V | tail -n1)"
  [ -n "$KPKG" ] || die "cannot resolve linux-image-cloud-amd64: run 'apt-get update' (scripts/install-deps.sh does) and retry"
  log "apt lists unavailable; using cached kernel package $KPKG"
fi
KVER="${KPKG#linux-image-}"   # e.g. 6.1.0-56-cloud-amd64

# --- 2. Download (cached) ---------------------------------------------------------------------------
DEB="$(ls "$CACHE/debs/${KPKG}_"*.deb 2>/dev/null | sort -V | tail -n1 || true)"
if [ -z "$DEB" ]; then
  log "downloading $KPKG"
  # Sandbox user root: the cache directory is not readable by _apt, which would only print a warning.
  ( cd "$CACHE/debs" && apt-get download -q -o APT::Sandbox::User=root "$KPKG" >/dev/null ) \
    || die "apt-get download $KPKG failed (is apt-get update done and the Debian mirror reachable?)"
  DEB="$(ls "$CACHE/debs/${KPKG}_"*.deb | sort -V | tail -n1)"
else
  log "kernel package cached: $(basename "$DEB")"
fi

# --- 3. Unpack (cached) -----------------------------------------------------------------------------
KROOT="$CACHE/kernel-$KVER"
if [ ! -f "$KROOT/.unpacked" ] || [ "$FORCE" = 1 ]; then
  log "unpacking $(basename "$DEB")"
  rm -rf "$KROOT"
  mkdir -p "$KROOT"
  dpkg -x "$DEB" "$KROOT"
  touch "$KROOT/.unpacked"
else
  log "kernel unpacked: $KROOT"
fi
VMLINUZ_SRC="$KROOT/boot/vmlinuz-$KVER"
KCONFIG="$KROOT/boot/config-$KVER"
MODDIR="$KROOT/lib/modules/$KVER"
[ -f "$VMLINUZ_SRC" ] || die "no kernel image in $DEB"
[ -f "$KCONFIG" ] || die "no kernel config in $DEB"

# --- 4. Which virtio pieces are modules? Resolve them and their dependencies in load order ----------
# Wanted drivers: virtio-pci transport and virtio-net (with failover, which virtio_net depends on).
WANT=(virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net)
declare -A KO_PATH=()
while IFS= read -r -d '' ko; do
  name="$(basename "$ko")"; name="${name%%.ko*}"; name="${name//-/_}"
  KO_PATH[$name]="$ko"
done < <(find "$MODDIR/kernel" -name '*.ko*' -print0)

ORDER=()
declare -A SEEN=()
add_module() {   # depth-first: dependencies before the module itself
  local m="${1//-/_}"
  [ -n "${SEEN[$m]:-}" ] && return 0
  SEEN[$m]=1
  local ko="${KO_PATH[$m]:-}"
  if [ -z "$ko" ]; then
    return 0   # built into the kernel (or absent); a missing driver shows up at boot as no eth0
  fi
  local deps d
  deps="$(modinfo -F depends "$ko" 2>/dev/null || true)"
  for d in ${deps//,/ }; do add_module "$d"; done
  ORDER+=("$m")
}
for m in "${WANT[@]}"; do add_module "$m"; done
BUILTIN=()
for m in "${WANT[@]}"; do [ -n "${KO_PATH[$m]:-}" ] || BUILTIN+=("$m"); done
log "kernel $KVER: modules to load: ${ORDER[*]:-none}; built in: ${BUILTIN[*]:-none}"

# --- 5. Initramfs (rebuilt when an input changes) -----------------------------------------------------
INPUT_HASH="$( {
  sha256sum "$0" "$INIT_SRC" "$BUSYBOX" "$IPERF3" "$VMLINUZ_SRC"
  for m in "${ORDER[@]}"; do sha256sum "${KO_PATH[$m]}"; done
  for lib in $(ldd "$IPERF3" | awk '/=>/ {print $3} /^\t\// {print $1}'); do sha256sum "$lib"; done
} | sha256sum | cut -c1-16 )"
INITRD="$CACHE/initramfs.cpio.gz"
VMLINUZ="$CACHE/vmlinuz"
STAMP="$CACHE/initramfs.stamp"
if [ "$FORCE" = 0 ] && [ -f "$INITRD" ] && [ -f "$VMLINUZ" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$INPUT_HASH" ]; then
  log "initramfs up to date ($INPUT_HASH): $INITRD"
else
  log "building initramfs"
  STAGE="$CACHE/initramfs.tmp"
  rm -rf "$STAGE"
  mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,lib/modules,lib64,lib/x86_64-linux-gnu}
  chmod 1777 "$STAGE/tmp"

  # busybox and one symlink per applet (made here so that boot does not spend time on --install).
  cp "$BUSYBOX" "$STAGE/bin/busybox"
  while IFS= read -r applet; do
    case "$applet" in
      bin/busybox|"") continue ;;
    esac
    [ -e "$STAGE/$applet" ] || ln -s /bin/busybox "$STAGE/$applet"
  done < <("$BUSYBOX" --list-full)

  # iperf3, its libraries and the dynamic loader, at the paths ldd reports.
  cp "$IPERF3" "$STAGE/usr/bin/iperf3"
  while IFS= read -r lib; do
    [ -n "$lib" ] || continue
    real="$(readlink -f "$lib")"
    mkdir -p "$STAGE/$(dirname "$lib")"
    cp "$real" "$STAGE/$lib"
  done < <(ldd "$IPERF3" | awk '/=>/ && $3 ~ /^\// {print $3} /^\t\// {print $1}')
  [ -e "$STAGE/lib64/ld-linux-x86-64.so.2" ] || die "dynamic loader not copied (ldd output unexpected)"

  # Kernel modules, in load order.
  : > "$STAGE/lib/modules/load-order"
  for m in "${ORDER[@]}"; do
    ko="${KO_PATH[$m]}"
    case "$ko" in
      *.ko) cp "$ko" "$STAGE/lib/modules/$m.ko" ;;
      *.ko.xz) xz -dc "$ko" > "$STAGE/lib/modules/$m.ko" ;;
      *.ko.zst) zstd -qdc "$ko" > "$STAGE/lib/modules/$m.ko" ;;
      *.ko.gz) gzip -dc "$ko" > "$STAGE/lib/modules/$m.ko" ;;
      *) die "unknown module format: $ko" ;;
    esac
    echo "$m" >> "$STAGE/lib/modules/load-order"
  done

  cp "$INIT_SRC" "$STAGE/init"
  chmod 755 "$STAGE/init"
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$STAGE/etc/passwd"
  printf 'root:x:0:\n' > "$STAGE/etc/group"
  printf '127.0.0.1 localhost\n10.0.2.2 guest\n' > "$STAGE/etc/hosts"
  echo "$KVER" > "$STAGE/etc/lgnet-kernel"

  ( cd "$STAGE" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0 ) \
    | gzip -6 > "$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  cp "$VMLINUZ_SRC" "$VMLINUZ.tmp" && mv "$VMLINUZ.tmp" "$VMLINUZ"
  rm -rf "$STAGE"
  echo "$INPUT_HASH" > "$STAMP"
  log "initramfs built: $INITRD ($(du -h "$INITRD" | cut -f1))"
fi

cat > "$CACHE/image.json.tmp" <<JSON
{
  "kernel": "$VMLINUZ",
  "initrd": "$INITRD",
  "kernelVersion": "$KVER",
  "kernelPackage": "$(basename "$DEB")",
  "modules": "$(IFS=,; echo "${ORDER[*]:-}")",
  "inputHash": "$INPUT_HASH"
}
JSON
mv "$CACHE/image.json.tmp" "$CACHE/image.json"
log "ready: kernel $VMLINUZ, initrd $INITRD"
