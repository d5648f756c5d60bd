/**
 * Unix sockets with fd passing (native/unix-socket.cc, SCM_RIGHTS): the vhost-user channel.
 * Part of native/ (index.ts re-exports it): TypeScript checks every argument before it crosses; C++
 * checks again.
 */
import { binding as b } from './load.ts';
import { checkInt, checkFd, checkString, checkBytes, toInt32Array } from './checks.ts';

/** SOCK_STREAM|SOCK_CLOEXEC socket bound to path and listening. The caller unlinks stale paths. */
export function unixListen(path: string, backlog = 8): number {
  checkString(path, 'path');
  checkInt(backlog, 'backlog', 1, 4096);
  return b.unixListen(path, backlog);
}

/** Socket domains and types as socketInfo reports them (sys/socket.h). */
export const SOCK = { AF_UNIX: 1, AF_INET: 2, AF_INET6: 10, STREAM: 1, DGRAM: 2, SEQPACKET: 5 } as const;

/**
 * What a socket fd is (SO_DOMAIN, SO_TYPE, SO_ACCEPTCONN) and, for AF_UNIX, the path it is bound to
 * ("@name" for an abstract name, "" unbound): for a socket another process handed over. Throws
 * NativeError (ENOTSOCK: not a socket).
 */
export function socketInfo(fd: number): { domain: number; type: number; listening: boolean; path: string } {
  checkFd(fd);
  return b.socketInfo(fd);
}

/** accept4(SOCK_CLOEXEC): the connected fd, or -1 on EAGAIN. */
export function unixAccept(fd: number): number {
  checkFd(fd);
  return b.unixAccept(fd);
}

export function unixConnect(path: string): number {
  checkString(path, 'path');
  return b.unixConnect(path);
}

/**
 * A nonblocking AF_UNIX datagram socket connected to `path`, or to the abstract name after a leading
 * '@' (how systemd's NOTIFY_SOCKET names either). Send on it with sendMsg: -1 means the receiver's
 * queue was full and the datagram was not sent.
 */
export function unixDgramConnect(path: string): number {
  checkString(path, 'path');
  return b.unixDgramConnect(path);
}

export function unixSocketpair(): [number, number] {
  return b.unixSocketpair();
}

/** shutdown(SHUT_RDWR). */
export function shutdown(fd: number): void {
  checkFd(fd);
  b.shutdown(fd);
}

/**
 * sendmsg(MSG_NOSIGNAL) of data with fds as SCM_RIGHTS (≤ 253; vhost-user uses ≤ 8; data must be
 * non-empty when fds are sent). Returns bytes sent, or -1 on EAGAIN.
 */
export function sendMsg(fd: number, data: Uint8Array, fds: readonly number[] = []): number {
  checkFd(fd);
  checkBytes(data, 'data');
  const arr = toInt32Array(fds, 'fds', 253);
  for (const f of arr) checkFd(f, 'fds entry');
  if (arr.length > 0 && data.length === 0) throw new RangeError('fds need at least one data byte to travel with');
  return b.sendMsg(fd, data, arr);
}

export interface RecvResult {
  /** Bytes received; -1 on EAGAIN; 0 on EOF. */
  bytes: number;
  /** Received fds (CLOEXEC); the caller owns and must close them. */
  fds: number[];
  /** The kernel truncated the control data (MSG_CTRUNC): fds were sent that did not arrive, most
   *  often because this process is at its open-file limit (RLIMIT_NOFILE). */
  ctrunc: boolean;
  /** More fds arrived than maxFds; the extras were closed. */
  excess: boolean;
}

/** recvmsg(MSG_CMSG_CLOEXEC) into buf, keeping at most maxFds passed fds. */
export function recvMsg(fd: number, buf: Uint8Array, maxFds = 8): RecvResult {
  checkFd(fd);
  checkBytes(buf, 'buf');
  checkInt(maxFds, 'maxFds', 0, 253);
  return b.recvMsg(fd, buf, maxFds);
}
