/**
 * One front-end's session on the vhost-user socket, and the libvhost-user parts that are the same for
 * every request: reading one message (12-byte header with its SCM_RIGHTS fds, then the payload),
 * validating it, dispatching it to its handler (handlers.ts), answering NEED_REPLY generically, and the
 * broken state.
 *
 *   socket ──FdPoller──▶ read header (12 bytes + fds) ──▶ payload ──▶ queue ──▶ pump
 *   pump: one message at a time ─▶ HANDLERS[request] (protocol feature, size and fd count checked first)
 *         ─▶ reply payload, or REPLY_ACK u64 0 when NEED_REPLY asked for one
 *   any VhostUserError ─▶ logged once with the request's name, counted, NEED_REPLY answered 1
 *         (GET_CONFIG: an empty reply, the spec's error form),
 *         connection dropped: rings stopped, fds closed, device reset, guest memory released.
 *   guest memory that shrank under the device (a truncated memfd/tmpfs/hugetlbfs file: native/guard.cc
 *         absorbed the SIGBUS) ─▶ VU_MEM_FAULT, logged, counted, connection dropped the same way.
 *         Reported by a queue (device `broken` with NET_GUEST_MEMORY_FAULT) or seen after a message.
 *
 * Fds: a message owns what it carried until its handler take()s one; whatever is left is closed after
 * dispatch, on every path. The socket is nonblocking and at most READ_AHEAD messages wait (back-pressure).
 * Spec: QEMU docs/interop/vhost-user.rst, "Message Specification" (header, flags, payload),
 * "Communication" (fds as ancillary data), VHOST_USER_PROTOCOL_F_REPLY_ACK (NEED_REPLY).
 * Design: DESIGN.md "Untrusted input", STYLE.md §4 (the broken state).
 */
import * as native from '../../native/index.ts';
import { NET_ERROR } from '../../device/errors.ts';
import type { Logger } from '../log.ts';
import { VhostUserError, VU, type VhostUserErrorCode } from './errors.ts';
import { HANDLERS, type Message, type Session } from './handlers.ts';
import type { DeviceHooks } from './hooks.ts';
import { InflightBuffer } from './inflight.ts';
import { BackendIommu } from './iommu.ts';
import { MemTable } from './mem-table.ts';
import type { Postcopy } from './postcopy.ts';
import {
  checkPayloadSize, decodeHeader, decodeU64, encodeMessage, encodeU64, F_LOG_ALL, F_PROTOCOL_FEATURES, FLAGS, HEADER_SIZE, isKnownRequest,
  MAX_FDS, MAX_PAYLOAD, PROTOCOL_F, REQ, requestName, type ProtocolFeatureName,
} from './messages.ts';
import { Vrings } from './vrings.ts';

/**
 * The server's counters (VhostUserServer.metrics): connections and messages bump them, handlers count
 * RARP; the metrics endpoint exposes them (sandbox/prometheus.ts). Keys by request are request names,
 * with every number lgnet does not know counted as UNKNOWN and an unreadable header as NONE, so a
 * hostile front-end cannot grow these tables.
 */
export interface ServerMetrics {
  connections: number;
  /** Connections after the first one (a front-end that came back, or that client mode reached again). */
  reconnects: number;
  messages: number;
  /** Dispatched messages by request name. */
  requests: Record<string, number>;
  /** Refused messages by error code. */
  errors: Partial<Record<VhostUserErrorCode, number>>;
  /** Refused messages by request name, then by error code. */
  refusals: Record<string, Partial<Record<VhostUserErrorCode, number>>>;
  /** SEND_RARP requests (each sends a RARP announce on the backend when it can). */
  rarp: number;
}

/** A fresh set of server counters. */
export function createServerMetrics(): ServerMetrics {
  return { connections: 0, reconnects: 0, messages: 0, requests: {}, errors: {}, refusals: {}, rarp: 0 };
}

/** The label a request number is counted under (bounded: unknown numbers share one). */
function requestKey(request: number | undefined): string {
  if (request === undefined) return 'NONE';
  return isKnownRequest(request) ? requestName(request) : 'UNKNOWN';
}

/** What a connection needs from the server that accepted it (VhostUserServer, server.ts). */
export interface ConnectionOwner {
  readonly log: Logger;
  readonly maxMemSlots: number;
  readonly protocolOffered: bigint;
  readonly payloadTimeoutMs: number;
  /** An open /dev/userfaultfd for postcopy, or -1. */
  readonly userfaultfd: number;
  readonly metrics: ServerMetrics;
  /** The server's `refused` event. */
  emit(event: 'refused', err: VhostUserError): boolean;
  /** The connection's teardown finished. */
  connectionClosed(c: Connection, error: VhostUserError | undefined): void;
}

/** Messages read ahead of the pump before the server stops reading (back-pressure). */
const READ_AHEAD = 64;

let nextConnectionId = 1;

/** The error for fds that did not arrive whole: the kernel's truncation (open-file limit) or too many. */
function fdError(r: { ctrunc: boolean }, what: string, request?: number): VhostUserError {
  const opts = request === undefined ? {} : { request };
  if (r.ctrunc) {
    return new VhostUserError(
      VU.FDS_LOST,
      `fds sent with ${what} did not arrive (MSG_CTRUNC): lgnet is at its open-file limit (RLIMIT_NOFILE); raise it (ulimit -n, systemd LimitNOFILE=) or serve fewer front-ends per process`,
      opts,
    );
  }
  return new VhostUserError(VU.TOO_MANY_FDS, `more than ${MAX_FDS} fds arrived with ${what}`, opts);
}

/** One front-end's session. Created by the server; dropped on EOF or on the first broken rule. */
export class Connection implements Session {
  readonly id = nextConnectionId++;
  readonly log: Logger;
  readonly mem: MemTable;
  readonly vrings: Vrings;
  /** The shared inflight buffer (GET/SET_INFLIGHT_FD). */
  readonly inflight: InflightBuffer;
  features = 0n;
  featuresSet = false;
  protocolFeatures = 0n;
  owner = false;
  mtu = 0;
  postcopy: Postcopy | null = null;
  /** Behind an IOMMU: the IOTLB and the back-end channel (iommu.ts). */
  readonly iommu: BackendIommu;
  private readonly unsubscribeMiss: () => void;
  private readonly poller: native.FdPoller;
  private readonly queue: Message[] = [];
  private pumping = false;
  private closing = false;
  private readonly hdr = new Uint8Array(HEADER_SIZE);
  private partial: { request: number; flags: number; payload: Uint8Array; got: number; fds: number[]; timer: NodeJS.Timeout } | null = null;
  /** Resolves when the connection is fully torn down. */
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private teardownError: VhostUserError | undefined;
  /** Faults in guest memory that the main thread took while handling a message. */
  private readonly faults = new native.FaultWatch();
  private readonly unsubscribeBroken: () => void;

  readonly server: ConnectionOwner;
  readonly dev: DeviceHooks;
  readonly fd: number;

  constructor(server: ConnectionOwner, dev: DeviceHooks, fd: number) {
    this.server = server;
    this.dev = dev;
    this.fd = fd;
    this.log = server.log.child({ conn: this.id });
    this.mem = new MemTable(dev, server.maxMemSlots);
    this.vrings = new Vrings(dev, () => this.mem.installed, (index, num) => this.inflight.region(index, num));
    this.inflight = new InflightBuffer(dev, this.vrings);
    this.closed = new Promise((r) => (this.resolveClosed = r));
    // A queue found its memory gone: the front-end's memory cannot be trusted, so neither can the session.
    this.unsubscribeBroken = dev.onBroken((_queue, code, message) => {
      if (code === NET_ERROR.GUEST_MEMORY_FAULT) this.memoryFault(message);
    });
    this.iommu = new BackendIommu(this.log);
    this.unsubscribeMiss = dev.onIotlbMiss?.((_queue, iova, access) => this.iommu.miss(iova, access)) ?? (() => {});
    this.poller = new native.FdPoller(fd, () => this.onReadable());
    this.poller.start(native.POLL.READABLE);
  }

  get offeredFeatures(): bigint {
    return this.dev.offered | (1n << BigInt(F_PROTOCOL_FEATURES)) | (1n << BigInt(F_LOG_ALL));
  }

  get isClosing(): boolean {
    return this.closing;
  }

  /** Fds this connection holds (rings, memory table, inflight): for leak checks. */
  fdCount(): number {
    return this.vrings.fdCount() + this.mem.count + this.inflight.fdCount;
  }

  /** Refuses a request that needs protocol feature `f` when this front-end did not negotiate it. */
  requireProtocol(f: ProtocolFeatureName, request: number): void {
    const bit = 1n << BigInt(PROTOCOL_F[f]);
    if (this.protocolFeatures & bit) return;
    const why = this.server.protocolOffered & bit ? 'the front-end did not negotiate it' : 'lgnet does not offer it here';
    throw new VhostUserError(VU.UNSUPPORTED_REQUEST, `${requestName(request)} needs protocol feature ${f}, and ${why}`);
  }

  // ---- reading

  private onReadable(): void {
    if (this.closing) return;
    try {
      while (!this.closing && this.queue.length < READ_AHEAD) {
        if (!this.readOne()) break;
      }
      if (this.queue.length >= READ_AHEAD) this.poller.stop(); // resumed by the pump
    } catch (e) {
      this.refuse(e, this.partial?.request);
      return;
    }
    void this.pump();
  }

  /** Reads one header or the rest of a payload; false when the socket has nothing more now. */
  private readOne(): boolean {
    const p = this.partial;
    if (p) {
      const r = native.recvMsg(this.fd, p.payload.subarray(p.got), MAX_FDS);
      p.fds.push(...r.fds);
      if (r.ctrunc || r.excess) throw fdError(r, requestName(p.request), p.request);
      if (r.bytes < 0) return false;
      if (r.bytes === 0) {
        this.drop('front-end closed the socket mid-message');
        return false;
      }
      p.got += r.bytes;
      if (p.got < p.payload.length) return true;
      clearTimeout(p.timer);
      this.partial = null;
      this.queue.push({ request: p.request, flags: p.flags, payload: p.payload, fds: p.fds });
      return true;
    }
    const r = native.recvMsg(this.fd, this.hdr, MAX_FDS);
    if (r.bytes < 0) {
      for (const fd of r.fds) native.closeQuietly(fd);
      return false;
    }
    if (r.bytes === 0) {
      for (const fd of r.fds) native.closeQuietly(fd);
      this.drop('front-end closed the socket');
      return false;
    }
    if (r.ctrunc || r.excess || r.bytes !== HEADER_SIZE) {
      for (const fd of r.fds) native.closeQuietly(fd);
      if (r.ctrunc || r.excess) throw fdError(r, 'one message');
      throw new VhostUserError(VU.SHORT_HEADER, `read ${r.bytes} header bytes; a vhost-user header is exactly ${HEADER_SIZE}`);
    }
    const h = decodeHeader(this.hdr);
    try {
      if ((h.flags & FLAGS.VERSION_MASK) !== FLAGS.VERSION) {
        throw new VhostUserError(VU.BAD_VERSION, `version ${h.flags & FLAGS.VERSION_MASK}; only version ${FLAGS.VERSION} exists`, { request: h.request });
      }
      if (h.flags & FLAGS.REPLY) throw new VhostUserError(VU.BAD_FLAGS, 'a request carried the REPLY flag', { request: h.request });
      if (h.size > MAX_PAYLOAD) {
        throw new VhostUserError(VU.PAYLOAD_TOO_LARGE, `payload of ${h.size} bytes; no request has more than ${MAX_PAYLOAD}`, { request: h.request });
      }
    } catch (e) {
      for (const fd of r.fds) native.closeQuietly(fd);
      throw e;
    }
    if (h.size === 0) {
      this.queue.push({ request: h.request, flags: h.flags, payload: new Uint8Array(0), fds: r.fds });
      return true;
    }
    const timer = setTimeout(() => {
      this.refuse(new VhostUserError(VU.SHORT_PAYLOAD, `the ${h.size}-byte payload did not arrive within ${this.server.payloadTimeoutMs} ms`, { request: h.request }), h.request);
    }, this.server.payloadTimeoutMs);
    this.partial = { request: h.request, flags: h.flags, payload: new Uint8Array(h.size), got: 0, fds: r.fds, timer };
    return true;
  }

  // ---- dispatch

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (!this.closing && this.queue.length > 0) {
        const m = this.queue.shift()!;
        await this.dispatch(m);
        if (!this.closing && this.queue.length < READ_AHEAD / 2 && !this.poller.closed) this.poller.start(native.POLL.READABLE);
      }
    } finally {
      this.pumping = false;
      if (this.closing) await this.teardown();
    }
  }

  private async dispatch(m: Message): Promise<void> {
    const name = requestName(m.request);
    const sm = this.server.metrics;
    sm.messages++;
    const key = requestKey(m.request);
    sm.requests[key] = (sm.requests[key] ?? 0) + 1;
    try {
      if (this.postcopy?.listening && isPostcopyAck(m)) {
        await this.postcopyAck(m);
        return;
      }
      const entry = HANDLERS[m.request];
      if (!entry) {
        if (isKnownRequest(m.request)) throw new VhostUserError(VU.UNSUPPORTED_REQUEST, `${name} is not supported by lgnet (its protocol feature is not offered)`);
        throw new VhostUserError(VU.UNKNOWN_REQUEST, `request ${m.request} does not exist`);
      }
      if (entry.protocol) this.requireProtocol(entry.protocol, m.request);
      checkPayloadSize(m.request, m.payload.length);
      const want = entry.fds ? entry.fds(m) : 0;
      const [lo, hi] = typeof want === 'number' ? [want, want] : want;
      if (m.fds.length < lo || m.fds.length > hi) {
        throw new VhostUserError(VU.BAD_FD_COUNT, `${name} carried ${m.fds.length} fds; it takes ${lo === hi ? lo : `${lo} to ${hi}`}`);
      }
      this.log.debug({ req: name, size: m.payload.length, fds: m.fds.length }, 'message');
      const t0 = performance.now();
      const reply = await entry.handle(this, m);
      this.log.debug({ req: name, ms: Math.round((performance.now() - t0) * 100) / 100 }, 'handled');
      if (reply) this.send(m.request, reply.payload, reply.fds);
      else if (m.flags & FLAGS.NEED_REPLY && !entry.replies) this.send(m.request, encodeU64(0));
    } catch (e) {
      const err = toVhostUserError(e, m.request);
      const entry = HANDLERS[m.request];
      const answer = entry?.errorReply ?? (m.flags & FLAGS.NEED_REPLY && !entry?.replies ? encodeU64(1) : undefined);
      if (answer && !this.closing) {
        try {
          this.send(m.request, answer);
        } catch {
          /* dropping anyway */
        }
      }
      this.refuse(err, m.request);
    } finally {
      for (const fd of m.fds) if (fd >= 0) native.closeQuietly(fd);
      m.fds.length = 0;
    }
    this.checkMemory();
  }

  /**
   * The front-end took the bases a postcopy memory table was answered with: from now on the memory may
   * be touched (and fault), so the rings may run.
   */
  private async postcopyAck(m: Message): Promise<void> {
    const v = decodeU64(m.payload);
    if (v !== 0n) throw new VhostUserError(VU.POSTCOPY_STATE, `the front-end refused the postcopy memory table (acknowledged ${v})`);
    this.postcopy!.awaitingAck = false;
    this.log.debug({ req: requestName(m.request) }, 'postcopy memory table acknowledged');
    await this.vrings.memoryChanged();
  }

  /** Fails the connection if guest memory took a fault on this thread (one load when none did). */
  private checkMemory(): void {
    const mem = this.dev.memory;
    if (this.closing || !mem) return;
    const id = this.faults.check(mem.regions.map((r) => r.mappingId));
    if (id < 0) return;
    const r = mem.regions.find((x) => x.mappingId === id)!;
    this.memoryFault(`guest memory region 0x${r.gpa.toString(16)}+0x${r.size.toString(16)} shrank after it was mapped (its file was truncated)`);
  }

  /** Guest memory vanished under the device: VU_MEM_FAULT, logged, counted, connection dropped. */
  private memoryFault(message: string): void {
    const err = new VhostUserError(VU.MEM_FAULT, `${message}; the connection is dropped. Seal memfds with F_SEAL_SHRINK, and never shrink memory a back-end has mapped`);
    this.refuse(err, undefined, 'guest memory vanished under the device; dropping the connection');
  }

  private send(request: number, payload: Uint8Array, fds: number[] = []): void {
    const bytes = encodeMessage(request, FLAGS.VERSION | FLAGS.REPLY, payload);
    const n = native.sendMsg(this.fd, bytes, fds);
    if (n !== bytes.length) {
      throw new VhostUserError(VU.REPLY_FAILED, `the ${requestName(request)} reply could not be written (${n} of ${bytes.length} bytes); the front-end is not reading`);
    }
  }

  // ---- dropping

  /** Logs the broken rule once, counts it, and drops the connection. */
  private refuse(e: unknown, request: number | undefined, what = 'vhost-user message refused; dropping the connection'): void {
    if (this.closing) return;
    const err = toVhostUserError(e, request);
    const sm = this.server.metrics;
    sm.errors[err.code] = (sm.errors[err.code] ?? 0) + 1;
    const byCode = (sm.refusals[requestKey(request)] ??= {});
    byCode[err.code] = (byCode[err.code] ?? 0) + 1;
    this.log.warn({ req: request === undefined ? undefined : requestName(request), code: err.code, err: err.message }, what);
    this.teardownError = err;
    this.server.emit('refused', err);
    this.drop(err.message);
  }

  /** Stops reading; the teardown runs as soon as no handler is in progress. */
  drop(reason: string): void {
    if (this.closing) return;
    this.closing = true;
    this.log.info({ reason }, 'connection closing');
    this.poller.close();
    // Now, not in the teardown: a handler in progress (a ring's stop) may be waiting on a worker that
    // waits on a fault this front-end will never serve, and the teardown waits for that handler.
    this.endPostcopy();
    if (this.partial) {
      clearTimeout(this.partial.timer);
      for (const fd of this.partial.fds) native.closeQuietly(fd);
      this.partial = null;
    }
    for (const m of this.queue.splice(0)) for (const fd of m.fds) if (fd >= 0) native.closeQuietly(fd);
    if (!this.pumping) void this.teardown();
  }

  /** Unregisters guest memory from the userfaultfd, waking every thread that waits on a fault. */
  private endPostcopy(): void {
    const pc = this.postcopy;
    this.postcopy = null;
    pc?.end();
  }

  private tornDown = false;

  private async teardown(): Promise<void> {
    if (this.tornDown) return;
    this.tornDown = true;
    this.unsubscribeBroken();
    this.unsubscribeMiss();
    const step = async (what: string, f: () => unknown): Promise<void> => {
      try {
        await f();
      } catch (e) {
        this.log.error({ err: (e as Error).message, step: what }, 'teardown step failed');
      }
    };
    // First, so that a worker waiting on a fault the front-end will never serve gets to stop.
    await step('postcopy', () => this.endPostcopy());
    await step('vrings', () => this.vrings.close());
    await step('device reset', () => this.dev.reset());
    await step('memory', () => this.dev.releaseMemory());
    await step('iommu', async () => {
      await this.dev.setIotlbMissSink?.(null); // the workers let go of the channel before it is closed
      this.dev.setIotlb?.(null);
      this.iommu.close();
    });
    this.mem.close();
    await step('inflight', () => this.inflight.drop());
    native.closeQuietly(this.fd);
    this.resolveClosed();
    this.server.connectionClosed(this, this.teardownError);
  }
}

/**
 * The acknowledgement of a postcopy memory table: QEMU repeats the request it last sent (SET_MEM_TABLE,
 * ADD_MEM_REG or REM_MEM_REG, or none when the table did not change) with a u64 as its payload.
 */
function isPostcopyAck(m: Message): boolean {
  return m.payload.length === 8 && m.fds.length === 0 && (m.request === REQ.SET_MEM_TABLE || m.request === REQ.ADD_MEM_REG || m.request === REQ.REM_MEM_REG || m.request === 0);
}

function toVhostUserError(e: unknown, request: number | undefined): VhostUserError {
  if (e instanceof VhostUserError) {
    if (e.request !== undefined || request === undefined) return e;
    const copy = new VhostUserError(e.code, e.message, { request, cause: e.cause });
    copy.stack = e.stack;
    return copy;
  }
  return new VhostUserError(VU.DEVICE, (e as Error)?.message ?? String(e), { ...(request !== undefined ? { request } : {}), cause: e });
}
