/**
 * Network namespaces and packet sockets (native/netns.cc): tests and the sandbox.
 * Part of native/ (index.ts re-exports it): TypeScript checks every argument before it crosses; C++
 * checks again.
 */
import { binding as b } from './load.ts';
import { checkFd, checkString } from './checks.ts';

/** setns(CLONE_NEWNET) on the calling thread into the namespace at path; returns the previous one's fd. */
export function netnsEnter(path: string): number {
  checkString(path, 'path');
  return b.netnsEnter(path);
}

/** Back to the namespace netnsEnter saved; closes prevFd. */
export function netnsLeave(prevFd: number): void {
  checkFd(prevFd, 'prevFd');
  b.netnsLeave(prevFd);
}

/** Runs fn with the calling thread inside the namespace at path, and always switches back. */
export function withNetns<T>(path: string, fn: () => T): T {
  const prev = netnsEnter(path);
  try {
    return fn();
  } finally {
    netnsLeave(prev);
  }
}

/** AF_PACKET SOCK_RAW ETH_P_ALL socket bound to ifname (in this thread's netns), CLOEXEC, nonblocking. */
export function packetOpen(ifname: string): number {
  checkString(ifname, 'ifname');
  if (ifname.length === 0 || Buffer.byteLength(ifname) > 15) throw new RangeError('interface name must be 1..15 bytes');
  return b.packetOpen(ifname);
}
