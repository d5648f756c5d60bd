/**
 * The harness's vhost-user front-end: it plays QEMU towards any vhost-user net back-end (lgnet, or
 * another one). It connects to a back-end's socket (or listens, for back-ends in client mode),
 * negotiates features and protocol features, shares a GuestRam memfd with SET_MEM_TABLE, and sets up
 * the vrings a VirtioNetDriver laid out (NUM, BASE, ADDR, KICK, CALL, ENABLE), so that the driver's
 * rings are served by the back-end. sendRaw() writes arbitrary bytes and fds, for hostile tests.
 *
 *   const fe = await VhostUserFrontend.connect(path);
 *   await fe.attachDriver(drv, ram);          // negotiate, memory, rings; REPLY_ACK makes each step synchronous
 *   drv.fillRx(); drv.send(frame); ...
 *   const bases = await fe.stopDriver(drv);   // GET_VRING_BASE per queue
 *   fe.close();
 *
 * Addresses: the driver's ring addresses are guest physical; SET_VRING_ADDR takes front-end virtual
 * ones, here ram.uaddr + (gpa - ram.gpa), consistent with the region's user address in the table.
 * Spec: QEMU docs/interop/vhost-user.rst (the front-end side of every message used here).
 */
import { existsSync, unlinkSync } from 'node:fs';
import { LgnetError } from '../errors/index.ts';
import * as native from '../native/index.ts';
import type { GuestRam } from './guest-ram.ts';
import type { VirtioNetDriver } from './virtio-net.ts';
import {
  decodeConfig, decodeHeader, decodeInflight, decodeU64, decodeVringState, encodeConfig, encodeInflight, encodeMemTable,
  encodeMessage, encodeSingleMemRegion, encodeU64, encodeVringAddr, encodeVringFile, encodeVringState, F_PROTOCOL_FEATURES,
  FLAGS, HEADER_SIZE, PROTOCOL_F, protocolMask, REQ, requestName,
} from '../sandbox/vhost-user/messages.ts';

/** A region as the front-end describes it, with the fd to share. */
export interface FrontendRegion {
  gpa: number;
  size: number;
  uaddr: number;
  mmapOffset?: number;
  fd: number;
}

/** A message read from the back-end. */
export interface ReceivedMessage {
  request: number;
  flags: number;
  payload: Uint8Array;
  fds: number[];
}

/** Stable codes of FrontendError: what the back-end under test did. */
export const FRONTEND_ERROR = {
  /** A REPLY_ACK with a non-zero status: the back-end refused the request. */
  NACK: 'FRONTEND_NACK',
  /** The back-end closed the connection. */
  CLOSED: 'FRONTEND_CLOSED',
  /** No reply in time. */
  TIMEOUT: 'FRONTEND_TIMEOUT',
  /** A reply the protocol does not allow (wrong request, flags or size). */
  BAD_REPLY: 'FRONTEND_BAD_REPLY',
  /** Features asked for that the back-end does not offer. */
  NOT_OFFERED: 'FRONTEND_NOT_OFFERED',
} as const;

/** One of the codes in {@link FRONTEND_ERROR}. */
export type FrontendErrorCode = (typeof FRONTEND_ERROR)[keyof typeof FRONTEND_ERROR];

/** The back-end answered in a way the protocol does not allow, failed a REPLY_ACK, or went away. */
export class FrontendError extends LgnetError {
  declare readonly code: FrontendErrorCode;
  constructor(code: FrontendErrorCode, message: string) {
    super(code, message);
  }
}

/** Requests that always have a reply. */
const REPLYING = new Set<number>([
  REQ.GET_FEATURES, REQ.GET_PROTOCOL_FEATURES, REQ.GET_VRING_BASE, REQ.GET_QUEUE_NUM, REQ.GET_CONFIG,
  REQ.GET_INFLIGHT_FD, REQ.GET_MAX_MEM_SLOTS, REQ.GET_STATUS,
]);

const PROTOCOL_BIT = 1n << BigInt(F_PROTOCOL_FEATURES);

/** Protocol features the harness understands and asks for by default. */
export const FRONTEND_PROTOCOL_FEATURES: bigint = protocolMask('MQ', 'REPLY_ACK', 'CONFIG', 'NET_MTU', 'CONFIGURE_MEM_SLOTS', 'STATUS', 'INFLIGHT_SHMFD', 'RARP');

export interface NegotiateOptions {
  /** Device features to accept, chosen from the offer (VHOST_USER_F_PROTOCOL_FEATURES is handled here). */
  features?: bigint | ((offered: bigint) => bigint);
  /** Protocol features wanted; intersected with the offer. Default FRONTEND_PROTOCOL_FEATURES. */
  protocolFeatures?: bigint;
}

export interface Negotiated {
  /** GET_FEATURES as offered (bit 30 included). */
  offered: bigint;
  /** What SET_FEATURES sent (bit 30 included when offered). */
  features: bigint;
  protocolOffered: bigint;
  protocolFeatures: bigint;
  /** GET_QUEUE_NUM, when MQ was negotiated. */
  queueNum: number | undefined;
  /** GET_MAX_MEM_SLOTS, when CONFIGURE_MEM_SLOTS was negotiated. */
  maxMemSlots: number | undefined;
}

export class VhostUserFrontend {
  readonly fd: number;
  /** Protocol features negotiated (0 until negotiate()). */
  protocolFeatures = 0n;
  /** What the last SET_FEATURES sent (bit 30 included when negotiated). */
  features = 0n;
  /** Default timeout of a reply. */
  timeoutMs: number;
  private poller: native.FdPoller | null;
  private inbox = new Uint8Array(0);
  private inboxFds: number[] = [];
  private messages: ReceivedMessage[] = [];
  private waiters: Array<() => void> = [];
  private eof = false;
  private readonly rbuf = new Uint8Array(4096);

  private constructor(fd: number, timeoutMs: number) {
    this.fd = fd;
    this.timeoutMs = timeoutMs;
    native.setNonblocking(fd, true);
    this.poller = new native.FdPoller(fd, () => this.onReadable());
    this.poller.start(native.POLL.READABLE);
  }

  /** Connects to a back-end listening on path, retrying until it listens or timeoutMs passes. */
  static async connect(path: string, opts: { timeoutMs?: number; retryMs?: number } = {}): Promise<VhostUserFrontend> {
    const deadline = Date.now() + (opts.timeoutMs ?? 5000);
    for (;;) {
      try {
        return new VhostUserFrontend(native.unixConnect(path), opts.timeoutMs ?? 5000);
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await sleep(opts.retryMs ?? 50);
      }
    }
  }

  /** Wraps an already connected socket fd (e.g. one end of a socketpair). */
  static fromFd(fd: number, opts: { timeoutMs?: number } = {}): VhostUserFrontend {
    return new VhostUserFrontend(fd, opts.timeoutMs ?? 5000);
  }

  /** Listens on path for back-ends in client mode; accept() gives the next one that connects. */
  static listen(path: string): FrontendListener {
    return new FrontendListener(path);
  }

  // ---- raw I/O

  /** Writes bytes (and fds) as they are: for hostile tests. Returns bytes written (-1: would block). */
  sendRaw(bytes: Uint8Array, fds: readonly number[] = []): number {
    return native.sendMsg(this.fd, bytes, fds);
  }

  /** Sends one request; flags default to version 1 (+ NEED_REPLY when asked). */
  sendRequest(request: number, payload: Uint8Array = new Uint8Array(0), opts: { fds?: readonly number[]; needReply?: boolean; flags?: number } = {}): void {
    const flags = opts.flags ?? (FLAGS.VERSION | (opts.needReply ? FLAGS.NEED_REPLY : 0));
    const bytes = encodeMessage(request, flags, payload);
    const n = this.sendRaw(bytes, opts.fds ?? []);
    if (n !== bytes.length) throw new FrontendError(FRONTEND_ERROR.CLOSED, `${requestName(request)}: wrote ${n} of ${bytes.length} bytes`);
  }

  /**
   * Sends a request and, when it has a reply (or needReply is set), waits for it. With needReply on a
   * request without a reply of its own, a non-zero REPLY_ACK throws FrontendError(FRONTEND_NACK).
   */
  async request(request: number, payload: Uint8Array = new Uint8Array(0), opts: { fds?: readonly number[]; needReply?: boolean } = {}): Promise<ReceivedMessage | undefined> {
    const needReply = opts.needReply ?? this.replyAck;
    this.sendRequest(request, payload, { ...(opts.fds ? { fds: opts.fds } : {}), needReply });
    if (!REPLYING.has(request) && !needReply) return undefined;
    const m = await this.readMessage();
    if (m.request !== request || !(m.flags & FLAGS.REPLY)) {
      for (const fd of m.fds) native.close(fd);
      throw new FrontendError(FRONTEND_ERROR.BAD_REPLY, `expected a ${requestName(request)} reply, got ${requestName(m.request)} flags 0x${m.flags.toString(16)}`);
    }
    if (!REPLYING.has(request)) {
      const v = m.payload.length === 8 ? decodeU64(m.payload) : -1n;
      if (v !== 0n) throw new FrontendError(FRONTEND_ERROR.NACK, `${requestName(request)} was refused (REPLY_ACK ${v})`);
    }
    return m;
  }

  /** The next message from the back-end. */
  async readMessage(timeoutMs = this.timeoutMs): Promise<ReceivedMessage> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.messages.shift();
      if (m) return m;
      if (this.eof) throw new FrontendError(FRONTEND_ERROR.CLOSED, 'the back-end closed the connection');
      const left = deadline - Date.now();
      if (left <= 0) throw new FrontendError(FRONTEND_ERROR.TIMEOUT, `no message from the back-end within ${timeoutMs} ms`);
      await this.wait(left);
    }
  }

  /** True once the back-end closed the connection (waits up to timeoutMs for it). */
  async waitClosed(timeoutMs = this.timeoutMs): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.eof) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await this.wait(left);
    }
    return true;
  }

  get isClosed(): boolean {
    return this.eof;
  }

  /** Closes the socket (and any fds received but not collected). */
  close(): void {
    this.poller?.close();
    this.poller = null;
    for (const m of this.messages.splice(0)) for (const fd of m.fds) closeQuietly(fd);
    for (const fd of this.inboxFds.splice(0)) closeQuietly(fd);
    if (!this.closedFd) {
      this.closedFd = true;
      closeQuietly(this.fd);
    }
    this.eof = true;
    this.wake();
  }

  private closedFd = false;

  private wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      const waiter = () => done();
      this.waiters.push(waiter);
      function done(): void {
        clearTimeout(t);
        resolve();
      }
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private onReadable(): void {
    for (;;) {
      let r: native.RecvResult;
      try {
        r = native.recvMsg(this.fd, this.rbuf, 8);
      } catch {
        this.eof = true;
        break;
      }
      this.inboxFds.push(...r.fds);
      if (r.bytes < 0) break;
      if (r.bytes === 0) {
        this.eof = true;
        break;
      }
      const merged = new Uint8Array(this.inbox.length + r.bytes);
      merged.set(this.inbox, 0);
      merged.set(this.rbuf.subarray(0, r.bytes), this.inbox.length);
      this.inbox = merged;
    }
    while (this.inbox.length >= HEADER_SIZE) {
      const h = decodeHeader(this.inbox.subarray(0, HEADER_SIZE));
      if (this.inbox.length < HEADER_SIZE + h.size) break;
      const payload = this.inbox.slice(HEADER_SIZE, HEADER_SIZE + h.size);
      this.inbox = this.inbox.slice(HEADER_SIZE + h.size);
      this.messages.push({ request: h.request, flags: h.flags, payload, fds: this.inboxFds.splice(0) });
    }
    if (this.eof) this.poller?.close();
    this.wake();
  }

  // ---- typed requests

  get replyAck(): boolean {
    return (this.protocolFeatures & (1n << BigInt(PROTOCOL_F.REPLY_ACK))) !== 0n;
  }

  private async u64(request: number): Promise<bigint> {
    const m = (await this.request(request))!;
    if (m.payload.length !== 8) throw new FrontendError(FRONTEND_ERROR.BAD_REPLY, `${requestName(request)} reply has ${m.payload.length} bytes, not 8`);
    return decodeU64(m.payload);
  }

  getFeatures(): Promise<bigint> {
    return this.u64(REQ.GET_FEATURES);
  }

  async setFeatures(bits: bigint): Promise<void> {
    await this.request(REQ.SET_FEATURES, encodeU64(bits));
    this.features = bits;
  }

  getProtocolFeatures(): Promise<bigint> {
    return this.u64(REQ.GET_PROTOCOL_FEATURES);
  }

  async setProtocolFeatures(bits: bigint): Promise<void> {
    // REPLY_ACK is not in force until the back-end has this message: never ask for an ack here.
    await this.request(REQ.SET_PROTOCOL_FEATURES, encodeU64(bits), { needReply: false });
    this.protocolFeatures = bits;
  }

  async setOwner(): Promise<void> {
    await this.request(REQ.SET_OWNER);
  }

  async resetOwner(): Promise<void> {
    await this.request(REQ.RESET_OWNER);
  }

  async getQueueNum(): Promise<number> {
    return Number(await this.u64(REQ.GET_QUEUE_NUM));
  }

  async getMaxMemSlots(): Promise<number> {
    return Number(await this.u64(REQ.GET_MAX_MEM_SLOTS));
  }

  async setMemTable(regions: readonly FrontendRegion[]): Promise<void> {
    await this.request(REQ.SET_MEM_TABLE, encodeMemTable(regions), { fds: regions.map((r) => r.fd) });
  }

  async addMemReg(r: FrontendRegion): Promise<void> {
    await this.request(REQ.ADD_MEM_REG, encodeSingleMemRegion(r), { fds: [r.fd] });
  }

  async remMemReg(r: Omit<FrontendRegion, 'fd'>): Promise<void> {
    await this.request(REQ.REM_MEM_REG, encodeSingleMemRegion(r));
  }

  async setVringNum(index: number, num: number): Promise<void> {
    await this.request(REQ.SET_VRING_NUM, encodeVringState({ index, num }));
  }

  async setVringBase(index: number, num: number): Promise<void> {
    await this.request(REQ.SET_VRING_BASE, encodeVringState({ index, num }));
  }

  /** GET_VRING_BASE: stops the ring; returns the next avail index the back-end would process. */
  async getVringBase(index: number): Promise<number> {
    const m = (await this.request(REQ.GET_VRING_BASE, encodeVringState({ index, num: 0 })))!;
    const s = decodeVringState(m.payload);
    if (s.index !== index) throw new FrontendError(FRONTEND_ERROR.BAD_REPLY, `GET_VRING_BASE for ${index} answered for ${s.index}`);
    return s.num;
  }

  async setVringAddr(index: number, a: { desc: number; used: number; avail: number; log?: number; flags?: number }): Promise<void> {
    await this.request(REQ.SET_VRING_ADDR, encodeVringAddr({ index, ...a }));
  }

  /** fd null sends the NOFD flag (polling). */
  async setVringKick(index: number, fd: number | null): Promise<void> {
    await this.request(REQ.SET_VRING_KICK, encodeVringFile(index, fd === null), { fds: fd === null ? [] : [fd] });
  }

  async setVringCall(index: number, fd: number | null): Promise<void> {
    await this.request(REQ.SET_VRING_CALL, encodeVringFile(index, fd === null), { fds: fd === null ? [] : [fd] });
  }

  async setVringErr(index: number, fd: number | null): Promise<void> {
    await this.request(REQ.SET_VRING_ERR, encodeVringFile(index, fd === null), { fds: fd === null ? [] : [fd] });
  }

  async setVringEnable(index: number, enable: boolean): Promise<void> {
    await this.request(REQ.SET_VRING_ENABLE, encodeVringState({ index, num: enable ? 1 : 0 }));
  }

  /** GET_CONFIG (valid once PROTOCOL_F_CONFIG is negotiated); an empty reply payload (the spec's error signal) throws. */
  async getConfig(offset: number, size: number): Promise<Uint8Array> {
    const m = (await this.request(REQ.GET_CONFIG, encodeConfig({ offset, size })))!;
    if (m.payload.length === 0) throw new FrontendError(FRONTEND_ERROR.NACK, `GET_CONFIG ${offset}+${size} was refused`);
    return decodeConfig(m.payload).data;
  }

  async setConfig(offset: number, data: Uint8Array, flags = 0): Promise<void> {
    await this.request(REQ.SET_CONFIG, encodeConfig({ offset, flags, data }));
  }

  async getStatus(): Promise<number> {
    return Number(await this.u64(REQ.GET_STATUS));
  }

  async setStatus(status: number): Promise<void> {
    await this.request(REQ.SET_STATUS, encodeU64(status));
  }

  async netSetMtu(mtu: number): Promise<void> {
    await this.request(REQ.NET_SET_MTU, encodeU64(mtu));
  }

  async sendRarp(mac: Uint8Array): Promise<void> {
    const p = new Uint8Array(8);
    p.set(mac.subarray(0, 6));
    await this.request(REQ.SEND_RARP, p);
  }

  /** GET_INFLIGHT_FD: the shared buffer's fd (the caller closes it) and its description. */
  async getInflightFd(numQueues: number, queueSize: number): Promise<{ fd: number; mmapSize: number; mmapOffset: number; numQueues: number; queueSize: number }> {
    const m = (await this.request(REQ.GET_INFLIGHT_FD, encodeInflight({ mmapSize: 0, mmapOffset: 0, numQueues, queueSize })))!;
    const p = decodeInflight(m.payload);
    if (m.fds.length !== 1) {
      for (const fd of m.fds) closeQuietly(fd);
      throw new FrontendError(FRONTEND_ERROR.BAD_REPLY, `GET_INFLIGHT_FD reply carried ${m.fds.length} fds, not 1`);
    }
    return { fd: m.fds[0]!, mmapSize: Number(p.mmapSize), mmapOffset: Number(p.mmapOffset), numQueues: p.numQueues, queueSize: p.queueSize };
  }

  async setInflightFd(fd: number, p: { mmapSize: number; mmapOffset: number; numQueues: number; queueSize: number }): Promise<void> {
    await this.request(REQ.SET_INFLIGHT_FD, encodeInflight(p), { fds: [fd] });
  }

  /** A cheap round trip: every earlier message has been handled when it returns (QEMU's trick without REPLY_ACK). */
  async barrier(): Promise<void> {
    await this.getFeatures();
  }

  // ---- high level

  /** The handshake QEMU does: features, protocol features, queue number, memory slots, owner. */
  async negotiate(opts: NegotiateOptions = {}): Promise<Negotiated> {
    const offered = await this.getFeatures();
    let protocolOffered = 0n;
    let protocolFeatures = 0n;
    let queueNum: number | undefined;
    let maxMemSlots: number | undefined;
    if (offered & PROTOCOL_BIT) {
      protocolOffered = await this.getProtocolFeatures();
      protocolFeatures = protocolOffered & (opts.protocolFeatures ?? FRONTEND_PROTOCOL_FEATURES);
      await this.setProtocolFeatures(protocolFeatures);
      if (protocolFeatures & (1n << BigInt(PROTOCOL_F.MQ))) queueNum = await this.getQueueNum();
      if (protocolFeatures & (1n << BigInt(PROTOCOL_F.CONFIGURE_MEM_SLOTS))) maxMemSlots = await this.getMaxMemSlots();
    }
    await this.setOwner();
    const device = offered & ~PROTOCOL_BIT;
    const wanted = typeof opts.features === 'function' ? opts.features(device) : (opts.features ?? device);
    const extra = wanted & ~offered;
    if (extra) throw new FrontendError(FRONTEND_ERROR.NOT_OFFERED, `features 0x${extra.toString(16)} are not offered by the back-end`);
    const features = wanted | (offered & PROTOCOL_BIT);
    await this.setFeatures(features);
    return { offered, features, protocolOffered, protocolFeatures, queueNum, maxMemSlots };
  }

  /** The front-end virtual address of a guest physical address in ram. */
  static uaddrOf(ram: GuestRam, gpa: number): number {
    return ram.uaddr + (gpa - ram.gpa);
  }

  /** The whole of ram as one region. */
  static regionOf(ram: GuestRam): FrontendRegion {
    const r = ram.region();
    return { gpa: r.gpa, size: r.size, uaddr: r.uaddr, mmapOffset: r.mmapOffset, fd: r.fd };
  }

  /**
   * Sets up a driver's queues on the back-end, as QEMU's vhost_dev_start does: negotiation (unless
   * already done), the memory table, for every queue NUM, BASE, ADDR, KICK, CALL, then ENABLE, and
   * SET_STATUS(DRIVER_OK) when STATUS was negotiated.
   * Returns the negotiation. Afterwards post RX buffers with drv.fillRx().
   */
  async attachDriver(drv: VirtioNetDriver, ram: GuestRam, opts: { negotiate?: boolean; enable?: boolean; base?: (index: number) => number; protocolFeatures?: bigint } = {}): Promise<Negotiated | undefined> {
    let neg: Negotiated | undefined;
    if (opts.negotiate !== false) {
      neg = await this.negotiate({ features: drv.features, ...(opts.protocolFeatures !== undefined ? { protocolFeatures: opts.protocolFeatures } : {}) });
    }
    await this.setMemTable([VhostUserFrontend.regionOf(ram)]);
    for (const { index, setup } of drv.queueSetups()) await this.startRing(ram, index, setup, opts.base?.(index) ?? 0, opts.enable !== false);
    // Like QEMU: the driver is up (ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK). Some back-ends
    // (DPDK's vhost library) do not start forwarding before they see it.
    if (this.protocolFeatures & (1n << BigInt(PROTOCOL_F.STATUS))) await this.setStatus(1 | 2 | 8 | 4);
    if (!this.replyAck) await this.barrier();
    return neg;
  }

  /** One ring: NUM, BASE, ADDR, KICK, CALL, ENABLE (when protocol features are in use). */
  async startRing(ram: GuestRam, index: number, setup: { size: number; desc: number; avail: number; used: number; kickFd: number; callFd: number }, base = 0, enable = true): Promise<void> {
    const u = (gpa: number) => VhostUserFrontend.uaddrOf(ram, gpa);
    await this.setVringNum(index, setup.size);
    await this.setVringBase(index, base);
    await this.setVringAddr(index, { desc: u(setup.desc), used: u(setup.used), avail: u(setup.avail) });
    await this.setVringKick(index, setup.kickFd);
    await this.setVringCall(index, setup.callFd);
    // With VHOST_USER_F_PROTOCOL_FEATURES rings start disabled and must be enabled (spec, "Ring states").
    if (this.features & PROTOCOL_BIT) await this.setVringEnable(index, enable);
  }

  /** GET_VRING_BASE for every queue of the driver: the rings stop; returns index → next avail. */
  async stopDriver(drv: VirtioNetDriver): Promise<Map<number, number>> {
    const out = new Map<number, number>();
    for (const { index } of drv.queueSetups()) out.set(index, await this.getVringBase(index));
    return out;
  }
}

/** A listening socket for back-ends in client mode. */
export class FrontendListener {
  readonly path: string;
  private readonly fd: number;
  private closed = false;

  constructor(path: string) {
    this.path = path;
    this.fd = native.unixListen(path);
    native.setNonblocking(this.fd, true);
  }

  /** Waits for the next back-end to connect. */
  async accept(timeoutMs = 5000, opts: { timeoutMs?: number } = {}): Promise<VhostUserFrontend> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const fd = native.unixAccept(this.fd);
      if (fd >= 0) return VhostUserFrontend.fromFd(fd, opts);
      if (Date.now() > deadline) throw new FrontendError(FRONTEND_ERROR.TIMEOUT, `no back-end connected to ${this.path} within ${timeoutMs} ms`);
      await sleep(20);
    }
  }

  /** Stops listening and removes the socket file. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeQuietly(this.fd);
    if (existsSync(this.path)) {
      try {
        unlinkSync(this.path);
      } catch {
        /* gone */
      }
    }
  }
}

function closeQuietly(fd: number): void {
  try {
    native.close(fd);
  } catch {
    /* already closed */
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
