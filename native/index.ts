/**
 * native/: the only layer of lgnet that makes system calls. This file is its one loader and its typed
 * facade: it finds lgnet.node, hands it the NativeError class, validates arguments in TypeScript before
 * they cross, and fills defaults. C++ (native/*.cc) re-checks everything, so a bad fd, id, offset or
 * length gives a NativeError/TypeError/RangeError, never a crash.
 *
 * Where things sit on the data path (DESIGN.md, "Data path and threads"):
 *   guest memory   memfdCreate, mmap, mmapAnonymous, mappingBuffer, munmap   (process-wide registry)
 *   frames         tapOpen, tapSetVnetHdrSize, tapSetOffload, writevBatch, readvBatch
 *   sleeping       eventfd*, poll, waitKick (worker threads); FdPoller (event-loop threads)
 *   control        unix sockets with SCM_RIGHTS (vhost-user)
 *   sandbox/tests  netnsEnter/Leave, packetOpen, fdRead/Write, no_new_privs, seccomp, set*id, rlimits
 *
 * Loading: $LGNET_NATIVE if set (and then only that), else what node-gyp-build finds under the package
 * root: build/Release or build/Debug (a clone, or an install that compiled), then
 * prebuilds/<platform>-<arch>/ (a tarball that carries a prebuild: no compiler needed). Each thread
 * that imports this module loads the addon into its own environment; the mapping registry is shared by
 * all of them.
 */
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import type { RawBinding, RawFdPoller } from './binding.d.ts';
import { NativeError } from './errors.ts';
import { IovecTable } from './iovec.ts';

export { NativeError } from './errors.ts';
export { IOVEC_WORDS, IovecTable } from './iovec.ts';

// ---- loading ---------------------------------------------------------------------------------------

/** The package root: one level above native/ in a clone, two above dist/native/ in what ships. */
const PACKAGE_ROOT = fileURLToPath(new URL(new URL(import.meta.url).pathname.endsWith('.ts') ? '..' : '../..', import.meta.url));

/** The paths the loader tries, in order. */
export function candidatePaths(): string[] {
  const explicit = process.env['LGNET_NATIVE'];
  if (explicit) return [resolve(explicit)];
  const require = createRequire(import.meta.url);
  const gypBuild = require('node-gyp-build') as { path(dir: string): string };
  try {
    return [gypBuild.path(PACKAGE_ROOT)];
  } catch {
    // Nothing built and no prebuild for this platform: report where node-gyp-build looked.
    return [resolve(PACKAGE_ROOT, 'build/Release/lgnet.node'), resolve(PACKAGE_ROOT, `prebuilds/${process.platform}-${process.arch}/lgnet.node`)];
  }
}

function load(): { binding: RawBinding; path: string } {
  const require = createRequire(import.meta.url);
  const failures: string[] = [];
  for (const path of candidatePaths()) {
    try {
      const binding = require(path) as RawBinding;
      binding.initialize(NativeError);
      return { binding, path };
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      failures.push(`  ${path}: ${err.code === 'MODULE_NOT_FOUND' ? 'not found' : (err.message ?? String(e))}`);
    }
  }
  throw new Error(
    `lgnet: cannot load the native addon. Tried:\n${failures.join('\n')}\n` +
      `In a clone, \`npm ci\` builds it (node-gyp). A package without a prebuild for this platform builds it at install ` +
      `when the project allows lgnet's install script: add "allowScripts": { "lgnet": true } to its package.json ` +
      `(or run \`npm install-scripts approve lgnet\`), then \`npm rebuild lgnet\`. Or point LGNET_NATIVE at a built lgnet.node.`,
  );
}

const loaded = load();
const b: RawBinding = loaded.binding;
/** The path lgnet.node was loaded from. */
export const nativePath: string = loaded.path;

// ---- argument checks (TS validates before crossing; C++ checks again) --------------------------------

const INT32_MAX = 0x7fff_ffff;
const UINT32_MAX = 0xffff_ffff;

function checkInt(v: unknown, what: string, lo: number, hi: number): asserts v is number {
  if (typeof v !== 'number') throw new TypeError(`${what} must be a number, got ${typeof v}`);
  if (!Number.isInteger(v) || v < lo || v > hi) throw new RangeError(`${what} must be an integer in [${lo}, ${hi}], got ${v}`);
}
function checkFd(fd: unknown, what = 'fd'): asserts fd is number {
  checkInt(fd, what, 0, INT32_MAX);
}
function checkString(s: unknown, what: string): asserts s is string {
  if (typeof s !== 'string') throw new TypeError(`${what} must be a string`);
  if (s.includes('\0')) throw new TypeError(`${what} must not contain NUL`);
}
function checkBytes(buf: unknown, what: string): asserts buf is Uint8Array {
  if (!(buf instanceof Uint8Array)) throw new TypeError(`${what} must be a Uint8Array`);
}
function toInt32Array(fds: Int32Array | readonly number[], what: string, max: number): Int32Array {
  if (fds instanceof Int32Array) {
    if (fds.length > max) throw new RangeError(`${what}: at most ${max} fds`);
    return fds;
  }
  if (!Array.isArray(fds)) throw new TypeError(`${what} must be an Int32Array or an array of fds`);
  if (fds.length > max) throw new RangeError(`${what}: at most ${max} fds`);
  for (const fd of fds) checkInt(fd, `${what} entry`, -1, INT32_MAX);
  return Int32Array.from(fds);
}

// ---- misc ------------------------------------------------------------------------------------------

/** Does nothing natively: the cost of one N-API call (scripts/bench/native.ts). */
export const nop: () => void = b.nop;

// ---- fds -------------------------------------------------------------------------------------------

export function close(fd: number): void {
  checkFd(fd);
  b.close(fd);
}

export function setNonblocking(fd: number, on: boolean): void {
  checkFd(fd);
  if (typeof on !== 'boolean') throw new TypeError('on must be a boolean');
  b.setNonblocking(fd, on);
}

/** read(2) into buf: bytes read, 0 on EOF, -1 on EAGAIN. */
export function fdRead(fd: number, buf: Uint8Array): number {
  checkFd(fd);
  checkBytes(buf, 'buf');
  return b.fdRead(fd, buf);
}

/** write(2) of buf: bytes written, -1 on EAGAIN. */
export function fdWrite(fd: number, buf: Uint8Array): number {
  checkFd(fd);
  checkBytes(buf, 'buf');
  return b.fdWrite(fd, buf);
}

// ---- eventfd ---------------------------------------------------------------------------------------

export interface EventfdOptions {
  nonblocking?: boolean;
  semaphore?: boolean;
  initval?: number;
}

/** eventfd2 with EFD_CLOEXEC. */
export function eventfdCreate(opts: EventfdOptions = {}): number {
  const initval = opts.initval ?? 0;
  checkInt(initval, 'initval', 0, UINT32_MAX);
  return b.eventfdCreate(initval, opts.nonblocking === true, opts.semaphore === true);
}

/** Reads (and so resets) the counter. A blocking fd blocks this thread; a nonblocking fd returns 0 when it is zero. */
export function eventfdRead(fd: number): number {
  checkFd(fd);
  return b.eventfdRead(fd);
}

/** Adds value (default 1) to the counter, waking a reader. */
export function eventfdWrite(fd: number, value = 1): void {
  checkFd(fd);
  checkInt(value, 'value', 1, Number.MAX_SAFE_INTEGER);
  b.eventfdWrite(fd, value);
}

// ---- guest memory / mapping registry -----------------------------------------------------------------

/** memfd_create(name, MFD_CLOEXEC) + ftruncate(size). */
export function memfdCreate(name: string, size: number): number {
  checkString(name, 'name');
  if (Buffer.byteLength(name) > 249) throw new RangeError('memfd name must be at most 249 bytes');
  checkInt(size, 'size', 0, Number.MAX_SAFE_INTEGER);
  return b.memfdCreate(name, size);
}

/**
 * Maps [offset, offset+length) of fd MAP_SHARED read/write into the process-wide registry and returns
 * its id. offset must be page-aligned; for a regular file (memfd) the range must lie inside the file.
 */
export function mmap(fd: number, offset: number, length: number): number {
  checkFd(fd);
  checkInt(offset, 'offset', 0, Number.MAX_SAFE_INTEGER);
  checkInt(length, 'length', 1, Number.MAX_SAFE_INTEGER);
  return b.mmap(fd, offset, length);
}

/** Private zeroed memory in the registry (device scratch buffers usable in batch I/O). */
export function mmapAnonymous(length: number): number {
  checkInt(length, 'length', 1, Number.MAX_SAFE_INTEGER);
  return b.mmapAnonymous(length);
}

/**
 * An external ArrayBuffer over the mapping, for the calling thread (external buffers cannot be
 * transferred: each worker calls this itself). After munmap(id) the buffer reads zeros.
 */
export function mappingBuffer(id: number): ArrayBuffer {
  checkInt(id, 'mapping id', 0, UINT32_MAX);
  return b.mappingBuffer(id);
}

export function mappingSize(id: number): number {
  checkInt(id, 'mapping id', 0, UINT32_MAX);
  return b.mappingSize(id);
}

/**
 * Releases a mapping: the id is invalid at once (NativeError EBADF/'mapping', or EFAULT/'iovec' in a
 * batch), the pages are replaced by zero pages at once, and the address range is unmapped when the
 * last ArrayBuffer over it is collected.
 */
export function munmap(id: number): void {
  checkInt(id, 'mapping id', 0, UINT32_MAX);
  b.munmap(id);
}

// ---- tap -------------------------------------------------------------------------------------------

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

/** TUNGETFEATURES: the IFF flags this kernel's tun driver supports. */
export function tapGetFeatures(fd: number): number {
  checkFd(fd);
  return b.tapGetFeatures(fd);
}

// ---- batched frame I/O ---------------------------------------------------------------------------------

function checkBatch(fd: number, table: IovecTable, frames: number): void {
  checkFd(fd);
  if (!(table instanceof IovecTable)) throw new TypeError('table must be an IovecTable');
  checkInt(frames, 'frames', 0, table.maxFrames);
}

/**
 * One writev per frame of the table, in one native call. Returns frames done; table.bytes[i] holds
 * the bytes of frame i. EAGAIN ends the batch early; an error on a later frame ends it too (the count
 * says where); an error on frame 0 throws NativeError('writev'). A bad entry throws NativeError
 * (EFAULT/EINVAL, 'iovec') before anything is written.
 */
export function writevBatch(fd: number, table: IovecTable, frames: number = table.frames): number {
  checkBatch(fd, table, frames);
  return b.writevBatch(fd, table.words, table.maxEntries, table.maxFrames, frames);
}

/** One readv per frame (each frame's iovecs receive one tap frame); as writevBatch otherwise. */
export function readvBatch(fd: number, table: IovecTable, frames: number = table.frames): number {
  checkBatch(fd, table, frames);
  return b.readvBatch(fd, table.words, table.maxEntries, table.maxFrames, frames);
}

// ---- waiting ----------------------------------------------------------------------------------------

/**
 * poll(2) for readability: bit i set when fds[i] is readable, errored or hung up; 0 on timeout.
 * At most 31 fds; negative fds are ignored; timeoutMs -1 waits forever. A closed fd throws EBADF.
 */
export function poll(fds: Int32Array | readonly number[], timeoutMs: number): number {
  const arr = toInt32Array(fds, 'fds', 31);
  checkInt(timeoutMs, 'timeoutMs', -1, INT32_MAX);
  return b.poll(arr, timeoutMs);
}

/** waitKick results. EXTRA0 << i: extraFds[i] became readable. */
export const WAKE = { AVAIL: 1, KICK: 2, EXTRA0: 4 } as const;

/**
 * The worker's sleep, closing the notification race in one place: write 1 to signalFd (if ≥ 0; the
 * pending interrupt), full fence, re-read the LE u16 at (mappingId, offset); if it differs from
 * lastSeen return WAKE.AVAIL at once; else poll kickFd (if ≥ 0) and extraFds up to timeoutMs (-1:
 * forever), drain a readable kickFd, and return WAKE bits (0 on timeout). The kick fd must have a single
 * reader (it is drained with a read that would block if another thread emptied it first).
 */
export function waitKick(
  kickFd: number,
  mappingId: number,
  offset: number,
  lastSeen: number,
  timeoutMs: number,
  extraFds?: Int32Array,
  signalFd = -1,
): number {
  checkInt(kickFd, 'kickFd', -1, INT32_MAX);
  checkInt(mappingId, 'mapping id', 0, UINT32_MAX);
  checkInt(offset, 'offset', 0, Number.MAX_SAFE_INTEGER);
  checkInt(lastSeen, 'lastSeen', 0, 0xffff);
  checkInt(timeoutMs, 'timeoutMs', -1, INT32_MAX);
  if (extraFds !== undefined && !(extraFds instanceof Int32Array)) throw new TypeError('extraFds must be an Int32Array');
  if (extraFds !== undefined && extraFds.length > 29) throw new RangeError('extraFds: at most 29 fds');
  checkInt(signalFd, 'signalFd', -1, INT32_MAX);
  return b.waitKick(kickFd, mappingId, offset, lastSeen, timeoutMs, extraFds, signalFd);
}

// ---- event-loop fd watching -------------------------------------------------------------------------------

/** uv_poll events (UV_READABLE, UV_WRITABLE, UV_DISCONNECT). */
export const POLL = { READABLE: 1, WRITABLE: 2, DISCONNECT: 4 } as const;

/**
 * Watches an fd on the calling thread's event loop (libuv uv_poll). The callback gets the POLL bits
 * that are ready, and a positive errno when libuv reported an error (then DISCONNECT is set too).
 *
 * - A started poller keeps the loop alive (unless unref()'d); stop() and close() release it.
 * - libuv sets O_NONBLOCK on the fd; an fd can have only one poller per loop (else EEXIST).
 * - Call stop() or close() before closing the fd; close() is idempotent and safe after the fd is gone.
 * - Works in worker_threads; a poller left open is closed when its thread's environment tears down.
 */
export class FdPoller {
  #raw: RawFdPoller | null;
  readonly fd: number;

  constructor(fd: number, callback: (events: number, errno: number) => void) {
    checkFd(fd);
    if (typeof callback !== 'function') throw new TypeError('callback must be a function');
    this.fd = fd;
    this.#raw = new b.FdPoller(fd, callback);
  }

  /** Starts (or changes) watching: events is a non-zero mix of POLL bits. */
  start(events: number): void {
    checkInt(events, 'events', 1, POLL.READABLE | POLL.WRITABLE | POLL.DISCONNECT);
    if (this.#raw === null) throw new NativeError(9 /* EBADF */, 'uv_poll_start', `FdPoller for fd ${this.fd} is closed`);
    this.#raw.start(events);
  }

  stop(): void {
    this.#raw?.stop();
  }

  /** Whether a started poller keeps the event loop alive (the default). */
  ref(): void {
    this.#raw?.ref();
  }

  unref(): void {
    this.#raw?.unref();
  }

  close(): void {
    const raw = this.#raw;
    this.#raw = null;
    raw?.close();
  }

  get closed(): boolean {
    return this.#raw === null;
  }
}

// ---- unix sockets with fd passing ----------------------------------------------------------------------

/** SOCK_STREAM|SOCK_CLOEXEC socket bound to path and listening. The caller unlinks stale paths. */
export function unixListen(path: string, backlog = 8): number {
  checkString(path, 'path');
  checkInt(backlog, 'backlog', 1, 4096);
  return b.unixListen(path, backlog);
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
  /** More fds arrived than maxFds (the extras were closed), or the kernel truncated control data. */
  ctrunc: boolean;
}

/** recvmsg(MSG_CMSG_CLOEXEC) into buf, keeping at most maxFds passed fds. */
export function recvMsg(fd: number, buf: Uint8Array, maxFds = 8): RecvResult {
  checkFd(fd);
  checkBytes(buf, 'buf');
  checkInt(maxFds, 'maxFds', 0, 253);
  return b.recvMsg(fd, buf, maxFds);
}

// ---- namespaces and packet sockets (tests, sandbox) ----------------------------------------------------

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

// ---- hardening (sandbox/jail.ts) --------------------------------------------------------------------------

/** prctl(PR_SET_NO_NEW_PRIVS, 1). */
export function setNoNewPrivs(): void {
  b.setNoNewPrivs();
}

/**
 * prctl(PR_SET_DUMPABLE, 0): the process leaves no core dump, and other processes of the same uid can
 * neither ptrace it nor read /proc/<pid>/mem (where guest memory is mapped).
 */
export function setNotDumpable(): void {
  b.setNotDumpable();
}

/** Bytes per classic BPF instruction (struct sock_filter). */
export const SOCK_FILTER_BYTES = 8;

/**
 * seccomp(SECCOMP_SET_MODE_FILTER) with a classic BPF program (struct sock_filter[], 8 bytes each,
 * ≤ 4096). With tsync (default) every thread of the process gets the filter or none does; the error
 * then has `tid`, the thread that could not synchronize.
 */
export function seccompInstall(filter: Uint8Array, opts: { tsync?: boolean } = {}): void {
  checkBytes(filter, 'filter');
  if (filter.length === 0 || filter.length % SOCK_FILTER_BYTES !== 0 || filter.length / SOCK_FILTER_BYTES > 4096) {
    throw new RangeError('filter must be 1..4096 instructions of 8 bytes');
  }
  b.seccompInstall(filter, opts.tsync !== false);
}

/** -1 leaves an id unchanged. Applies to every thread (glibc). */
export function setresuid(r: number, e: number, s: number): void {
  for (const v of [r, e, s]) checkInt(v, 'uid', -1, UINT32_MAX - 1);
  b.setresuid(r, e, s);
}

export function setresgid(r: number, e: number, s: number): void {
  for (const v of [r, e, s]) checkInt(v, 'gid', -1, UINT32_MAX - 1);
  b.setresgid(r, e, s);
}

export function setgroups(gids: readonly number[]): void {
  if (!Array.isArray(gids)) throw new TypeError('gids must be an array');
  for (const g of gids) checkInt(g, 'gid', 0, UINT32_MAX - 1);
  b.setgroups(Uint32Array.from(gids));
}

/** RLIMIT_* numbers (asm-generic, used by x86-64 and arm64). */
export const RLIMIT = { fsize: 1, core: 4, nproc: 6, nofile: 7, memlock: 8 } as const;
export type RlimitResource = keyof typeof RLIMIT;

function resourceOf(resource: RlimitResource): number {
  const n = RLIMIT[resource];
  if (n === undefined) throw new RangeError(`unknown rlimit resource '${String(resource)}'`);
  return n;
}

function checkLimit(v: number, what: string): void {
  if (typeof v !== 'number') throw new TypeError(`${what} must be a number`);
  if (v !== Infinity && (!Number.isSafeInteger(v) || v < 0)) throw new RangeError(`${what} must be a non-negative integer or Infinity`);
}

/** setrlimit; Infinity means RLIM_INFINITY. */
export function setrlimit(resource: RlimitResource, soft: number, hard: number): void {
  const n = resourceOf(resource);
  checkLimit(soft, 'soft');
  checkLimit(hard, 'hard');
  b.setrlimit(n, soft, hard);
}

/** getrlimit; Infinity for RLIM_INFINITY. */
export function getrlimit(resource: RlimitResource): { soft: number; hard: number } {
  return b.getrlimit(resourceOf(resource));
}

/** chroot(path) then chdir('/'). */
export function chroot(path: string): void {
  checkString(path, 'path');
  b.chroot(path);
}
