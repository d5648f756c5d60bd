/**
 * Taps (native/tap.cc): open with IFF_VNET_HDR, the vnet header size, offloads.
 * Part of native/ (index.ts re-exports it): TypeScript checks every argument before it crosses; C++
 * checks again.
 */
import { INT32_MAX, UINT32_MAX, checkInt, checkFd, checkString } from './checks.ts';
import { binding as b } from './load.ts';

/** TUNSETOFFLOAD flags (linux/if_tun.h). USO4/USO6 need Linux 6.2+. */
export const TUN_F = {
  CSUM: 0x01,
  TSO4: 0x02,
  TSO6: 0x04,
  TSO_ECN: 0x08,
  UFO: 0x10,
  USO4: 0x20,
  USO6: 0x40,
} as const;

/** Interface flags as TUNGETFEATURES reports them (linux/if_tun.h). */
export const IFF = {
  TUN: 0x0001,
  TAP: 0x0002,
  NAPI: 0x0010,
  NAPI_FRAGS: 0x0020,
  MULTI_QUEUE: 0x0100,
  NO_PI: 0x1000,
  VNET_HDR: 0x4000,
  PERSIST: 0x0800,
  /** TUNGETIFF on a queue detached with TUNSETQUEUE. */
  DETACH_QUEUE: 0x0400,
} as const;

export interface TapOptions {
  /** Interface name (≤ 15 bytes); attaches to an existing tap of that name. Empty or absent: kernel picks tapN. */
  name?: string;
  vnetHdr: boolean;
  multiQueue?: boolean;
  nonblocking?: boolean;
}

/** Opens /dev/net/tun as IFF_TAP|IFF_NO_PI (+ IFF_VNET_HDR, IFF_MULTI_QUEUE) in this thread's netns. */
export function tapOpen(opts: TapOptions): { fd: number; name: string } {
  const name = opts.name ?? '';
  checkString(name, 'name');
  if (Buffer.byteLength(name) > 15) throw new RangeError('tap name must be at most 15 bytes');
  if (typeof opts.vnetHdr !== 'boolean') throw new TypeError('vnetHdr must be a boolean');
  return b.tapOpen(name, opts.vnetHdr, opts.multiQueue === true, opts.nonblocking === true);
}

/**
 * TUNSETIFF again on an fd tapOpen made, after its interface was deleted (its I/O then fails with
 * EBADFD): attaches the same fd to the interface now named `name`, or creates it where allowed. The
 * fd number stays, so the workers that hold it need not know. Throws NativeError (EPERM: not the tap's
 * owner and no CAP_NET_ADMIN; EBUSY: flags that do not match an existing tap).
 */
export function tapAttach(fd: number, name: string, opts: { vnetHdr: boolean; multiQueue?: boolean }): void {
  checkFd(fd);
  checkString(name, 'name');
  if (name.length === 0 || Buffer.byteLength(name) > 15) throw new RangeError('tap name must be 1 to 15 bytes');
  b.tapAttach(fd, name, opts.vnetHdr === true, opts.multiQueue === true);
}

/** TUNSETVNETHDRSZ: 10 (legacy/no MRG_RXBUF) or 12 (VERSION_1 or MRG_RXBUF) bytes. */
export function tapSetVnetHdrSize(fd: number, size: number): void {
  checkFd(fd);
  checkInt(size, 'size', 0, INT32_MAX);
  b.tapSetVnetHdrSize(fd, size);
}

/** TUNSETOFFLOAD with TUN_F flags. */
export function tapSetOffload(fd: number, flags: number): void {
  checkFd(fd);
  checkInt(flags, 'flags', 0, UINT32_MAX);
  b.tapSetOffload(fd, flags);
}

/**
 * TUNSETQUEUE on one queue (fd) of a multi-queue tap: detached, the kernel steers the host's frames to
 * the queues still attached and drops what this one held; attached, it takes its share again. Throws
 * NativeError (EINVAL: not a multi-queue tap, or already in that state).
 */
export function tapSetQueue(fd: number, attach: boolean): void {
  checkFd(fd);
  if (typeof attach !== 'boolean') throw new TypeError('attach must be a boolean');
  b.tapSetQueue(fd, attach);
}

/**
 * TUNGETIFF: the interface a tun fd is attached to, and that interface's IFF flags ({@link IFF}): what
 * an fd another process opened turns out to be (a detached queue of a multi-queue tap still names
 * it, with IFF.DETACH_QUEUE). Throws NativeError (EBADFD: attached to nothing; ENOTTY or EINVAL: not a
 * tun fd).
 */
export function tapInfo(fd: number): { name: string; flags: number } {
  checkFd(fd);
  return b.tapInfo(fd);
}

/**
 * TUNGETDEVNETNS: the inode of the network namespace the tap's interface is in (compare with
 * /proc/self/ns/net's), or -1 when the kernel will not say (no CAP_NET_ADMIN over that namespace, or
 * a kernel before 5.2). Throws NativeError for an fd that is not a tun fd attached to an interface.
 */
export function tapNetnsInode(fd: number): number {
  checkFd(fd);
  return b.tapNetnsInode(fd);
}

/** TUNGETFEATURES: the IFF flags this kernel's tun driver supports. */
export function tapGetFeatures(fd: number): number {
  checkFd(fd);
  return b.tapGetFeatures(fd);
}

/**
 * Opens the character device of the macvtap `name` (in this thread's namespace): /dev/tap<ifindex>,
 * read-write, close-on-exec. Each open is one more queue of the macvtap, with IFF_VNET_HDR on; the
 * fd then takes the tap ioctls (header size, offloads, TUNSETQUEUE) and moves frames as a tap's does.
 * Throws NativeError
 * (ENODEV: no such interface; ENOENT: no node, which udev or devtmpfs makes; ENXIO: the node is
 * another namespace's macvtap of the same index; ENOTTY: not a macvtap's device).
 */
export function macvtapOpen(name: string, opts: { nonblocking?: boolean } = {}): { fd: number; path: string } {
  checkString(name, 'name');
  if (name.length === 0 || Buffer.byteLength(name) > 15) throw new RangeError('interface name must be 1 to 15 bytes');
  return b.macvtapOpen(name, opts.nonblocking === true);
}

/** SIOCGIFHWADDR on a tap's or a macvtap's fd: the interface's MAC address (6 bytes). */
export function tapHwAddr(fd: number): Uint8Array {
  checkFd(fd);
  return new Uint8Array(b.tapHwAddr(fd));
}

/**
 * SIOCSIFHWADDR on a macvtap's fd: gives the macvtap the address `mac` (6 bytes), so that its lower
 * device hands it the frames sent there. The fd's holder needs no capability. Throws NativeError
 * (EADDRINUSE: another macvlan of the same lower device has it; EADDRNOTAVAIL: not a unicast address;
 * ENOLINK: the macvtap was deleted).
 */
export function tapSetHwAddr(fd: number, mac: Uint8Array): void {
  checkFd(fd);
  if (!(mac instanceof Uint8Array) || mac.length !== 6) throw new TypeError('mac must be a Uint8Array of 6 bytes');
  b.tapSetHwAddr(fd, mac);
}

/**
 * Whether a tap-like fd is a macvtap's (drivers/net/tap.c) rather than a tun's: its TUNGETFEATURES lack
 * IFF_TUN. The two differ where it matters: a macvtap's queue is an open of its device, it cannot be
 * attached to another interface, and once the macvtap is deleted its writes succeed and go nowhere
 * (TUNGETIFF then fails with ENOLINK) where a tap's fail with EBADFD.
 */
export function isMacvtapFd(fd: number): boolean {
  return (tapGetFeatures(fd) & IFF.TUN) === 0;
}
