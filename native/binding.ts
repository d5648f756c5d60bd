/**
 * The raw exports of build/Release/lgnet.node, exactly as C++ registers them (native/*.cc). Only
 * native/ uses this shape (load.ts loads it); everything else imports the typed facade, index.ts. Arguments are
 * positional and fully specified (the facade fills defaults); C++ re-checks every one.
 */
import type { NativeError } from './errors.ts';

export interface RawFdPoller {
  start(events: number): void;
  stop(): void;
  close(): void;
  ref(): void;
  unref(): void;
}

export interface RawBinding {
  initialize(errorClass: typeof NativeError): void;
  nop(): void;

  // fd.cc
  close(fd: number): void;
  setNonblocking(fd: number, on: boolean): void;
  setCloexec(fd: number, on: boolean): void;
  fdRead(fd: number, buf: Uint8Array): number;
  fdWrite(fd: number, buf: Uint8Array): number;

  // eventfd.cc
  eventfdCreate(initval: number, nonblocking: boolean, semaphore: boolean): number;
  eventfdRead(fd: number): number;
  eventfdWrite(fd: number, value: number): void;

  // memory.cc
  memfdCreate(name: string, size: number, sealable: boolean): number;
  mmap(fd: number, offset: number, length: number): number;
  mmapAnonymous(length: number): number;
  mappingBuffer(id: number): ArrayBuffer;
  mappingSize(id: number): number;
  collectGarbage(): void;
  mappingFaults(id: number): number;
  munmap(id: number): void;

  // guard.cc
  memoryGuard(): { installed: boolean; faults: number; guards: number };
  faultCounter(): ArrayBuffer;

  // tap.cc
  tapOpen(name: string, vnetHdr: boolean, multiQueue: boolean, nonblocking: boolean): { fd: number; name: string };
  tapSetVnetHdrSize(fd: number, size: number): void;
  tapSetOffload(fd: number, flags: number): void;
  tapAttach(fd: number, name: string, vnetHdr: boolean, multiQueue: boolean): void;
  tapGetFeatures(fd: number): number;
  tapSetQueue(fd: number, attach: boolean): void;
  tapInfo(fd: number): { name: string; flags: number };
  tapNetnsInode(fd: number): number;
  macvtapOpen(name: string, nonblocking: boolean): { fd: number; path: string };
  tapHwAddr(fd: number): Uint8Array;
  tapSetHwAddr(fd: number, mac: Uint8Array): void;

  // batch.cc
  // words = IovecTable.words: entries (maxEntries × 4 u32), frameEnd (maxFrames u32), bytes (maxFrames i32).
  writevBatch(fd: number, words: Uint32Array, maxEntries: number, maxFrames: number, frames: number): number;
  readvBatch(fd: number, words: Uint32Array, maxEntries: number, maxFrames: number, frames: number): number;
  // words as above, plus used (maxFrames u32) and one status word; peek = PeekList.bytes.
  readvMerged(
    fd: number,
    words: Uint32Array,
    maxEntries: number,
    maxFrames: number,
    first: number,
    buffers: number,
    frames: number,
    need: number,
    maxLen: number,
    peek: Uint8Array | undefined,
  ): number;
  // spec = RxFilterSpec.bytes; frame: the Ethernet header's first bytes.
  rxFilterAccepts(spec: Uint8Array, frame: Uint8Array, len: number): boolean;

  // uring.cc
  uringCreate(fds: Int32Array, entries: number): { id: number; fd: number };
  uringClose(id: number): void;
  uringFds(): number[];
  // words as for writevBatch; bytes[i] = result of frame i (bytes or -errno).
  uringWritevBatch(id: number, words: Uint32Array, maxEntries: number, maxFrames: number, frames: number): number;
  // words as for readvBatch; returns slots settled; bytes[i] = frame length, or -1 for a slot given back empty.
  uringReadvBatch(id: number, words: Uint32Array, maxEntries: number, maxFrames: number, frames: number): number;
  // as readvMerged, on a ring; filter = RxFilterSpec.bytes (a rejected frame: used 0, bytes = -length).
  uringReadvMerged(
    id: number,
    words: Uint32Array,
    maxEntries: number,
    maxFrames: number,
    first: number,
    buffers: number,
    frames: number,
    need: number,
    maxLen: number,
    filter: Uint8Array | undefined,
  ): number;
  uringTry(id: number, op: string, fd: number, fixed: boolean, buf: Uint8Array | undefined): number;
  // frames uringReadvMerged staged and has not delivered; discard: none from now on.
  uringRxStash(id: number, discard: boolean): number;
  uringRegister(id: number, op: number): void;

  // wait.cc
  poll(fds: Int32Array, timeoutMs: number): number;
  waitKick(
    kickFd: number,
    mappingId: number,
    offset: number,
    lastSeen: number,
    timeoutMs: number,
    extraFds: Int32Array | undefined,
    signalFd: number,
    backendFd: number,
  ): number;

  // poller.cc
  FdPoller: new (fd: number, callback: (events: number, errno: number) => void) => RawFdPoller;

  // unix-socket.cc
  unixListen(path: string, backlog: number): number;
  unixAccept(fd: number): number;
  socketInfo(fd: number): { domain: number; type: number; listening: boolean; path: string };
  unixConnect(path: string): number;
  unixDgramConnect(path: string): number;
  unixSocketpair(): [number, number];
  shutdown(fd: number): void;
  sendMsg(fd: number, data: Uint8Array, fds: Int32Array): number;
  recvMsg(fd: number, buf: Uint8Array, maxFds: number): { bytes: number; fds: number[]; ctrunc: boolean; excess: boolean };

  // netns.cc
  netnsEnter(path: string): number;
  netnsLeave(prevFd: number): void;
  packetOpen(ifname: string): number;

  // hardening.cc
  setNoNewPrivs(): void;
  setNotDumpable(): void;
  setThreadName(name: string): void;
  setThreadAffinity(cpus: Uint32Array): void;
  threadAffinity(): number[];
  seccompInstall(filter: Uint8Array, tsync: boolean): void;
  setresuid(r: number, e: number, s: number): void;
  setresgid(r: number, e: number, s: number): void;
  setgroups(gids: Uint32Array): void;
  setrlimit(resource: number, soft: number, hard: number): void;
  getrlimit(resource: number): { soft: number; hard: number };
  chroot(path: string): void;

  // userfault.cc
  userfaultfdDevice(): number;
  userfaultfdNew(deviceFd: number): number;
  userfaultRegister(uffd: number, mappingId: number): number;
  userfaultUnregister(uffd: number, mappingId: number): void;
  userfaultRead(uffd: number): number;
  userfaultWake(uffd: number, address: number, length: number): void;
}
