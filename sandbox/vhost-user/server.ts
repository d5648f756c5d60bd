/**
 * The vhost-user back-end: a unix socket on which one front-end (QEMU, cloud-hypervisor, DPDK
 * virtio-user, the harness) at a time describes guest memory and virtqueues, and this server turns
 * each message into calls on the device (DeviceHooks: what NetDevice exposes, nothing of networking).
 *
 *   socket ──FdPoller──▶ read header (12 bytes + SCM_RIGHTS fds) ──▶ payload ──▶ queue ──▶ pump
 *   pump: one message at a time ─▶ HANDLERS[request] (protocol feature, size and fd count checked first)
 *         ─▶ reply payload, or REPLY_ACK u64 0 when NEED_REPLY asked for one
 *   any VhostUserError ─▶ logged once with the request's name, counted, NEED_REPLY answered 1
 *         (GET_CONFIG: an empty reply, the spec's error form),
 *         connection dropped: rings stopped, fds closed, device reset, guest memory released;
 *         the server goes on (accepts the next connection, or reconnects in client mode).
 *
 * Everything runs on the main thread's event loop; nothing blocks it (the socket is nonblocking, the
 * device's start/stop are promises). Workers are the device's business.
 * Spec: QEMU docs/interop/vhost-user.rst. Design: DESIGN.md "Untrusted input", STYLE.md §4/§12.
 */
import { EventEmitter } from 'node:events';
import { lstatSync, unlinkSync } from 'node:fs';
import * as native from '../../native/index.ts';
import type { MemoryRegionSpec, NetDevice } from '../../device/net.ts';
import { silentLogger, type Logger } from '../log.ts';
import { VhostUserError, VU, type VhostUserErrorCode } from './errors.ts';
import { MemTable, type MemoryTarget } from './mem-table.ts';
import {
  checkPayloadSize, decodeConfig, decodeHeader, decodeInflight, decodeMemTable, decodeSingleMemRegion, decodeU64,
  decodeVringAddr, decodeVringFile, decodeVringState, encodeConfig, encodeInflight, encodeMessage, encodeU64, type InflightPayload,
  encodeVringState, F_PROTOCOL_FEATURES, FLAGS, HEADER_SIZE, isKnownRequest, MAX_FDS, MAX_PAYLOAD, PROTOCOL_F, protocolMask,
  protocolNames, REQ, requestName, type ProtocolFeatureName,
} from './messages.ts';
import { Vrings, type QueueTarget } from './vrings.ts';
import { inflightQueueRegionSize } from '../../vring/index.ts';

// ---- the device seam -------------------------------------------------------------------------------

/**
 * What the server needs from a device (libvhost-user's VuDevIface, cut to what lgnet uses). A
 * NetDevice provides it through {@link netDeviceHooks}; tests may supply their own.
 */
export interface DeviceHooks extends QueueTarget, MemoryTarget {
  /** Device feature bits offered (VHOST_USER_F_PROTOCOL_FEATURES is added by the server). */
  readonly offered: bigint;
  /** Answer to GET_QUEUE_NUM (for virtio-net: queue pairs, which is what QEMU compares against). */
  readonly queueNum: number;
  /** Bytes of device config space (GET/SET_CONFIG bounds). */
  readonly configSize: number;
  setFeatures(bits: bigint): void;
  readConfig(offset: number, size: number): Uint8Array;
  writeConfig(offset: number, data: Uint8Array): void;
  status: number;
  /** Back to the initial state: queues stopped and forgotten, features cleared. */
  reset(): Promise<void>;
  /** Drops the guest memory mappings of a front-end that went away. */
  releaseMemory(): Promise<void>;
  /** Subscribes to "queue broken" reports; returns the unsubscribe function. */
  onBroken(cb: (queue: number, code: string, message: string) => void): () => void;
}

/** Adapts a NetDevice. */
export function netDeviceHooks(dev: NetDevice): DeviceHooks {
  return {
    get offered() { return dev.offered; },
    get queueNum() { return dev.maxQueuePairs; },
    get queueCount() { return dev.queueCount; },
    get configSize() { return dev.config.bytes.length; },
    get memory() { return dev.memory; },
    get status() { return dev.status; },
    set status(s: number) { dev.status = s; },
    setFeatures: (bits) => dev.setFeatures(bits),
    setMemory: (specs: MemoryRegionSpec[]) => dev.setMemory(specs),
    setupQueue: (i, s) => dev.setupQueue(i, s),
    startQueue: (i) => dev.startQueue(i),
    stopQueue: (i) => dev.stopQueue(i),
    isTx: (i) => i < 2 * dev.maxQueuePairs && (i & 1) === 1,
    readConfig: (o, n) => dev.readConfig(o, n),
    writeConfig: (o, d) => dev.writeConfig(o, d),
    reset: () => dev.reset(),
    releaseMemory: () => dev.releaseMemory(),
    onBroken(cb) {
      const h = (e: { queue: number; code: string; message: string }) => cb(e.queue, e.code, e.message);
      dev.on('broken', h);
      return () => dev.off('broken', h);
    },
  };
}

// ---- options and metrics ---------------------------------------------------------------------------

/**
 * Protocol features lgnet offers by default. CONFIG is not among them: QEMU's virtio-net keeps the
 * config space on its side (it reads a back-end's only for vhost-vdpa), refuses CONFIG for a net
 * back-end and warns about it at every connection. Front-ends that do read a net back-end's config
 * (cloud-hypervisor's vhost-user-net, UML's virtio_uml) get it with `config: true`.
 */
export const OFFERED_PROTOCOL_FEATURES: bigint = protocolMask('MQ', 'REPLY_ACK', 'NET_MTU', 'CONFIGURE_MEM_SLOTS', 'STATUS', 'INFLIGHT_SHMFD', 'RARP');

const CONFIG_BIT = protocolMask('CONFIG');

/** Memory slots offered through GET_MAX_MEM_SLOTS (ADD_MEM_REG). */
export const DEFAULT_MAX_MEM_SLOTS = 32;

export interface VhostUserServerOptions {
  device: DeviceHooks;
  /** The socket path. */
  path: string;
  /** Connect to `path` (the VMM listens) instead of listening on it. */
  client?: boolean;
  /** Client mode: delay between connection attempts. Default 1000 ms. */
  reconnectMs?: number;
  maxMemSlots?: number;
  /** The protocol features to offer. Default OFFERED_PROTOCOL_FEATURES. */
  protocolFeatures?: bigint;
  /**
   * Also offer PROTOCOL_F_CONFIG (GET/SET_CONFIG), or (false) take it out of `protocolFeatures`.
   * Default: as `protocolFeatures` says, so off with the default set.
   */
  config?: boolean;
  /**
   * close() removes the socket file. Default true. False when another process removes it: a jailed
   * `lgnet serve` may not unlink, and its socket reaper does it once the process is gone.
   */
  removeSocketOnClose?: boolean;
  logger?: Logger;
  /** How long the rest of a message may take to arrive after its header. Default 2000 ms. */
  payloadTimeoutMs?: number;
}

export interface ServerMetrics {
  connections: number;
  messages: number;
  /** Refused messages by error code. */
  errors: Partial<Record<VhostUserErrorCode, number>>;
  /** RARP requests (lgnet has no frame-injection path; they are counted only). */
  rarp: number;
}

// ---- messages and handlers -------------------------------------------------------------------------

interface Message {
  request: number;
  flags: number;
  payload: Uint8Array;
  /** Received fds; a handler that keeps one sets its slot to -1 (see take()). The rest are closed. */
  fds: number[];
}

/** A reply payload, with fds when the reply carries some (GET_INFLIGHT_FD). */
interface Reply {
  payload: Uint8Array;
  fds?: number[];
}

type Handler = (c: Connection, m: Message) => Promise<Reply | undefined> | Reply | undefined;

interface Entry {
  /** Fds the message must carry: a number, or [min, max]. Default 0. */
  fds?: (m: Message) => number | [number, number];
  handle: Handler;
  /** The request has a reply of its own (NEED_REPLY adds nothing). */
  replies?: boolean;
  /** The request is valid only once this protocol feature is negotiated ("When … is negotiated"). */
  protocol?: ProtocolFeatureName;
  /** The reply that says "refused" when the request has a reply of its own, sent before the drop. */
  errorReply?: Uint8Array;
}

function take(m: Message, i: number): number {
  const fd = m.fds[i]!;
  m.fds[i] = -1;
  return fd;
}

function u64Reply(v: bigint | number): Reply {
  return { payload: encodeU64(v) };
}

/** The dispatch table: one small handler per request, as libvhost-user does. */
const HANDLERS: Partial<Record<number, Entry>> = {
  [REQ.GET_FEATURES]: { replies: true, handle: (c) => u64Reply(c.offeredFeatures) },

  [REQ.SET_FEATURES]: {
    async handle(c, m) {
      const bits = decodeU64(m.payload);
      const extra = bits & ~c.offeredFeatures;
      if (extra !== 0n) {
        throw new VhostUserError(VU.FEATURES_NOT_OFFERED, `features 0x${extra.toString(16)} were not offered (offered 0x${c.offeredFeatures.toString(16)})`);
      }
      const protocol = (bits & (1n << BigInt(F_PROTOCOL_FEATURES))) !== 0n;
      await c.vrings.stopAll(); // features cannot change under running workers
      try {
        c.dev.setFeatures(bits & ~(1n << BigInt(F_PROTOCOL_FEATURES)));
      } catch (e) {
        throw new VhostUserError(VU.FEATURES_NOT_OFFERED, (e as Error).message, { cause: e });
      }
      c.features = bits;
      if (!protocol) await c.vrings.enableAll();
      await c.vrings.memoryChanged(); // restarts what was running
      return undefined;
    },
  },

  [REQ.GET_PROTOCOL_FEATURES]: { replies: true, handle: (c) => u64Reply(c.server.protocolOffered) },

  [REQ.SET_PROTOCOL_FEATURES]: {
    handle(c, m) {
      const bits = decodeU64(m.payload);
      const extra = bits & ~c.server.protocolOffered;
      if (extra !== 0n) {
        throw new VhostUserError(VU.PROTOCOL_FEATURES_NOT_OFFERED, `protocol features ${protocolNames(extra).join(', ')} were not offered`);
      }
      c.protocolFeatures = bits;
      return undefined;
    },
  },

  // Sent once per vhost device; QEMU's multiqueue net sends it once per queue pair on one connection.
  [REQ.SET_OWNER]: { handle: (c) => { c.owner = true; return undefined; } },

  // Deprecated; the spec recommends ignoring it or disabling all rings. lgnet disables them.
  [REQ.RESET_OWNER]: { handle: async (c) => { await c.vrings.disableAll(); return undefined; } },

  [REQ.RESET_DEVICE]: {
    async handle(c) {
      await c.vrings.close();
      await c.dev.reset();
      c.features = 0n;
      return undefined;
    },
  },

  [REQ.SET_MEM_TABLE]: {
    fds: (m) => decodeMemTable(m.payload).length, // validates the count and the size first
    async handle(c, m) {
      const wire = decodeMemTable(m.payload);
      await c.mem.replace(wire, m.fds);
      m.fds.forEach((_, i) => take(m, i));
      await c.vrings.memoryChanged();
      return undefined;
    },
  },

  [REQ.GET_MAX_MEM_SLOTS]: { replies: true, handle: (c) => u64Reply(c.server.maxMemSlots) },

  [REQ.ADD_MEM_REG]: {
    fds: () => 1,
    async handle(c, m) {
      if (await c.mem.add(decodeSingleMemRegion(m.payload), m.fds[0]!)) take(m, 0); // else a duplicate: its fd is closed
      await c.vrings.memoryChanged();
      return undefined;
    },
  },

  // "No file descriptors SHOULD be passed … the back-end MAY accept messages with one" (and closes it).
  [REQ.REM_MEM_REG]: {
    fds: () => [0, 1],
    async handle(c, m) {
      await c.mem.remove(decodeSingleMemRegion(m.payload));
      await c.vrings.memoryChanged();
      return undefined;
    },
  },

  [REQ.SET_VRING_NUM]: {
    handle: async (c, m) => {
      const s = decodeVringState(m.payload);
      await c.vrings.setNum(s.index, s.num);
      return undefined;
    },
  },

  [REQ.SET_VRING_ADDR]: { handle: async (c, m) => { await c.vrings.setAddr(decodeVringAddr(m.payload)); return undefined; } },

  [REQ.SET_VRING_BASE]: {
    handle: async (c, m) => {
      const s = decodeVringState(m.payload);
      await c.vrings.setBase(s.index, s.num);
      return undefined;
    },
  },

  [REQ.GET_VRING_BASE]: {
    replies: true,
    async handle(c, m) {
      const s = decodeVringState(m.payload);
      const base = await c.vrings.getBase(s.index);
      return { payload: encodeVringState({ index: s.index, num: base }) };
    },
  },

  [REQ.SET_VRING_KICK]: {
    fds: (m) => (decodeVringFile(m.payload).noFd ? 0 : 1),
    async handle(c, m) {
      const f = decodeVringFile(m.payload);
      c.vrings.ring(f.index);
      await c.vrings.setKick(f.index, f.noFd ? -1 : take(m, 0));
      return undefined;
    },
  },

  [REQ.SET_VRING_CALL]: {
    fds: (m) => (decodeVringFile(m.payload).noFd ? 0 : 1),
    async handle(c, m) {
      const f = decodeVringFile(m.payload);
      c.vrings.ring(f.index);
      await c.vrings.setCall(f.index, f.noFd ? -1 : take(m, 0));
      return undefined;
    },
  },

  [REQ.SET_VRING_ERR]: {
    fds: (m) => (decodeVringFile(m.payload).noFd ? 0 : 1),
    handle(c, m) {
      const f = decodeVringFile(m.payload);
      c.vrings.ring(f.index);
      c.vrings.setErr(f.index, f.noFd ? -1 : take(m, 0));
      return undefined;
    },
  },

  [REQ.SET_VRING_ENABLE]: {
    async handle(c, m) {
      const s = decodeVringState(m.payload);
      if (s.num > 1) throw new VhostUserError(VU.BAD_VRING_STATE, `SET_VRING_ENABLE ${s.num} for vring ${s.index}: must be 0 or 1`);
      await c.vrings.setEnable(s.index, s.num === 1);
      return undefined;
    },
  },

  [REQ.GET_QUEUE_NUM]: { replies: true, handle: (c) => u64Reply(c.dev.queueNum) },

  // The spec's error answer to GET_CONFIG is a reply with an empty payload.
  [REQ.GET_CONFIG]: {
    replies: true,
    protocol: 'CONFIG',
    errorReply: new Uint8Array(0),
    handle(c, m) {
      const cfg = decodeConfig(m.payload);
      c.checkConfigRange(cfg.offset, cfg.size);
      return { payload: encodeConfig({ offset: cfg.offset, flags: cfg.flags, data: c.dev.readConfig(cfg.offset, cfg.size) }) };
    },
  },

  [REQ.SET_CONFIG]: {
    protocol: 'CONFIG',
    handle(c, m) {
      const cfg = decodeConfig(m.payload);
      c.checkConfigRange(cfg.offset, cfg.size);
      try {
        c.dev.writeConfig(cfg.offset, cfg.data);
      } catch (e) {
        throw new VhostUserError(VU.CONFIG_RANGE, `SET_CONFIG at ${cfg.offset}+${cfg.size}: ${(e as Error).message}`, { cause: e });
      }
      return undefined;
    },
  },

  [REQ.SEND_RARP]: {
    handle(c, m) {
      const mac = [...m.payload.subarray(0, 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
      c.server.metrics.rarp++;
      c.log.info({ mac }, 'SEND_RARP: noted (lgnet does not inject frames; guests with GUEST_ANNOUNCE announce themselves)');
      return undefined;
    },
  },

  [REQ.NET_SET_MTU]: {
    handle(c, m) {
      const mtu = decodeU64(m.payload);
      if (mtu < 68n || mtu > 65535n) throw new VhostUserError(VU.BAD_MTU, `MTU ${mtu} is outside [68, 65535]`);
      c.mtu = Number(mtu);
      c.log.info({ mtu: c.mtu }, 'front-end MTU');
      return undefined;
    },
  },

  [REQ.SET_STATUS]: {
    handle(c, m) {
      const s = decodeU64(m.payload);
      if (s > 0xffn) throw new VhostUserError(VU.BAD_STATUS, `status 0x${s.toString(16)} is not a status byte`);
      c.dev.status = Number(s);
      return undefined;
    },
  },

  [REQ.GET_STATUS]: { replies: true, handle: (c) => u64Reply(c.dev.status) },

  [REQ.GET_INFLIGHT_FD]: {
    replies: true,
    async handle(c, m) {
      const req = decodeInflight(m.payload);
      c.checkInflightShape(req.numQueues, req.queueSize);
      const size = inflightQueueRegionSize(req.queueSize) * req.numQueues;
      let fd: number;
      try {
        fd = native.memfdCreate('lgnet-inflight', size);
      } catch (e) {
        throw new VhostUserError(VU.BAD_INFLIGHT, `could not create the inflight buffer: ${(e as Error).message}`, { cause: e });
      }
      // Zero-filled by ftruncate: every queue's record starts empty (version 0) and is laid out when the
      // queue first starts. The connection keeps this fd (and closes it); the reply sends a copy.
      await c.setInflight(fd, { mmapSize: BigInt(size), mmapOffset: 0n, numQueues: req.numQueues, queueSize: req.queueSize });
      return { payload: encodeInflight({ mmapSize: size, mmapOffset: 0, numQueues: req.numQueues, queueSize: req.queueSize }, m.payload.length), fds: [fd] };
    },
  },

  [REQ.SET_INFLIGHT_FD]: {
    fds: () => 1,
    async handle(c, m) {
      const p = decodeInflight(m.payload);
      c.checkInflightShape(p.numQueues, p.queueSize);
      await c.setInflight(take(m, 0), p);
      return undefined;
    },
  },
};

// ---- one connection --------------------------------------------------------------------------------

/** Messages read ahead of the pump before the server stops reading (back-pressure). */
const READ_AHEAD = 64;

let nextConnectionId = 1;

/** One front-end's session. Created by the server; dropped on EOF or on the first broken rule. */
export class Connection {
  readonly id = nextConnectionId++;
  readonly log: Logger;
  readonly mem: MemTable;
  readonly vrings: Vrings;
  features = 0n;
  protocolFeatures = 0n;
  owner = false;
  mtu = 0;
  /** The shared inflight buffer (GET/SET_INFLIGHT_FD): its fd, its mapping and its shape. */
  private inflight: { fd: number; mappingId: number; numQueues: number; queueSize: number } | null = null;
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

  readonly server: VhostUserServer;
  readonly dev: DeviceHooks;
  readonly fd: number;

  constructor(server: VhostUserServer, dev: DeviceHooks, fd: number) {
    this.server = server;
    this.dev = dev;
    this.fd = fd;
    this.log = server.log.child({ conn: this.id });
    this.mem = new MemTable(dev, server.maxMemSlots);
    this.vrings = new Vrings(dev, () => this.mem.installed, (index, num) => this.inflightRegion(index, num));
    this.closed = new Promise((r) => (this.resolveClosed = r));
    this.poller = new native.FdPoller(fd, () => this.onReadable());
    this.poller.start(native.POLL.READABLE);
  }

  get offeredFeatures(): bigint {
    return this.dev.offered | (1n << BigInt(F_PROTOCOL_FEATURES));
  }

  get isClosing(): boolean {
    return this.closing;
  }

  /** Fds this connection holds (rings, memory table, inflight): for leak checks. */
  fdCount(): number {
    return this.vrings.fdCount() + this.mem.count + (this.inflight ? 1 : 0);
  }

  /** Refuses a request that needs protocol feature `f` when this front-end did not negotiate it. */
  requireProtocol(f: ProtocolFeatureName, request: number): void {
    const bit = 1n << BigInt(PROTOCOL_F[f]);
    if (this.protocolFeatures & bit) return;
    const why = this.server.protocolOffered & bit ? 'the front-end did not negotiate it' : 'lgnet does not offer it here';
    throw new VhostUserError(VU.UNSUPPORTED_REQUEST, `${requestName(request)} needs protocol feature ${f}, and ${why}`);
  }

  checkConfigRange(offset: number, size: number): void {
    if (offset + size > this.dev.configSize) {
      throw new VhostUserError(VU.CONFIG_RANGE, `config access ${offset}+${size} is outside the device's ${this.dev.configSize}-byte config space`);
    }
  }

  checkInflightShape(numQueues: number, queueSize: number): void {
    if (numQueues < 1 || numQueues > this.dev.queueCount) {
      throw new VhostUserError(VU.BAD_INFLIGHT, `inflight for ${numQueues} queues; this device has ${this.dev.queueCount}`);
    }
    if (!(queueSize > 0 && (queueSize & (queueSize - 1)) === 0)) {
      throw new VhostUserError(VU.BAD_INFLIGHT, `inflight queue size ${queueSize} must be a power of 2 in [1, 32768]`);
    }
  }

  /**
   * Takes the inflight buffer `fd` (owned from now on, closed on failure): maps it, then restarts the
   * rings that run so that they record into it (and take up what it lists). Replaces an earlier one.
   */
  async setInflight(fd: number, p: InflightPayload): Promise<void> {
    let mappingId: number;
    try {
      const need = BigInt(inflightQueueRegionSize(p.queueSize) * p.numQueues);
      if (p.mmapSize < need || p.mmapOffset + p.mmapSize > 2n ** 53n) {
        throw new VhostUserError(VU.BAD_INFLIGHT, `inflight area of 0x${p.mmapSize.toString(16)} bytes at 0x${p.mmapOffset.toString(16)} cannot hold ${p.numQueues} queues of ${p.queueSize} (0x${need.toString(16)} bytes)`);
      }
      try {
        mappingId = native.mmap(fd, Number(p.mmapOffset), Number(p.mmapSize));
      } catch (e) {
        throw new VhostUserError(VU.BAD_INFLIGHT, `cannot map the inflight buffer: ${(e as Error).message}`, { cause: e });
      }
    } catch (e) {
      closeQuietly(fd);
      throw e;
    }
    await this.vrings.stopAll();
    this.dropInflight();
    this.inflight = { fd, mappingId, numQueues: p.numQueues, queueSize: p.queueSize };
    await this.vrings.memoryChanged(); // restarts what was running, now recording
  }

  private dropInflight(): void {
    if (!this.inflight) return;
    native.munmap(this.inflight.mappingId);
    closeQuietly(this.inflight.fd);
    this.inflight = null;
  }

  /** Ring `index` (of `num` entries) records into the inflight buffer if the buffer covers it. */
  private inflightRegion(index: number, num: number): { mappingId: number; offset: number } | null {
    const f = this.inflight;
    if (!f || index >= f.numQueues) return null;
    if (num !== f.queueSize) {
      throw new VhostUserError(VU.BAD_INFLIGHT, `vring ${index} has ${num} entries; the inflight buffer was laid out for ${f.queueSize}`);
    }
    return { mappingId: f.mappingId, offset: index * inflightQueueRegionSize(f.queueSize) };
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
      if (r.ctrunc) throw new VhostUserError(VU.TOO_MANY_FDS, `more than ${MAX_FDS} fds arrived with ${requestName(p.request)}`, { request: p.request });
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
      for (const fd of r.fds) closeQuietly(fd);
      return false;
    }
    if (r.bytes === 0) {
      for (const fd of r.fds) closeQuietly(fd);
      this.drop('front-end closed the socket');
      return false;
    }
    if (r.ctrunc || r.bytes !== HEADER_SIZE) {
      for (const fd of r.fds) closeQuietly(fd);
      if (r.ctrunc) throw new VhostUserError(VU.TOO_MANY_FDS, `more than ${MAX_FDS} fds arrived with one message`);
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
      for (const fd of r.fds) closeQuietly(fd);
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
    this.server.metrics.messages++;
    try {
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
      const reply = await entry.handle(this, m);
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
      for (const fd of m.fds) if (fd >= 0) closeQuietly(fd);
      m.fds.length = 0;
    }
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
  private refuse(e: unknown, request: number | undefined): void {
    if (this.closing) return;
    const err = toVhostUserError(e, request);
    this.server.metrics.errors[err.code] = (this.server.metrics.errors[err.code] ?? 0) + 1;
    this.log.warn({ req: request === undefined ? undefined : requestName(request), code: err.code, err: err.message }, 'vhost-user message refused; dropping the connection');
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
    if (this.partial) {
      clearTimeout(this.partial.timer);
      for (const fd of this.partial.fds) closeQuietly(fd);
      this.partial = null;
    }
    for (const m of this.queue.splice(0)) for (const fd of m.fds) if (fd >= 0) closeQuietly(fd);
    if (!this.pumping) void this.teardown();
  }

  private tornDown = false;

  private async teardown(): Promise<void> {
    if (this.tornDown) return;
    this.tornDown = true;
    const step = async (what: string, f: () => unknown): Promise<void> => {
      try {
        await f();
      } catch (e) {
        this.log.error({ err: (e as Error).message, step: what }, 'teardown step failed');
      }
    };
    await step('vrings', () => this.vrings.close());
    await step('device reset', () => this.dev.reset());
    await step('memory', () => this.dev.releaseMemory());
    this.mem.close();
    await step('inflight', () => this.dropInflight());
    closeQuietly(this.fd);
    this.resolveClosed();
    this.server.connectionClosed(this, this.teardownError);
  }
}

function closeQuietly(fd: number): void {
  try {
    native.close(fd);
  } catch {
    /* already closed */
  }
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

// ---- the server ------------------------------------------------------------------------------------

/**
 * Serves one front-end at a time on a unix socket. Events: `connection` (Connection), `disconnect`
 * ({connection, error?}), `refused` (VhostUserError), `listening`.
 */
export class VhostUserServer extends EventEmitter {
  readonly path: string;
  readonly client: boolean;
  readonly log: Logger;
  readonly maxMemSlots: number;
  readonly protocolOffered: bigint;
  readonly payloadTimeoutMs: number;
  /**
   * close() removes the socket file (see VhostUserServerOptions). Settable until close(): `lgnet serve`
   * clears it once it is jailed.
   */
  removeSocketOnClose: boolean;
  readonly metrics: ServerMetrics = { connections: 0, messages: 0, errors: {}, rarp: 0 };
  private readonly device: DeviceHooks;
  private readonly reconnectMs: number;
  private listenFd = -1;
  private listenPoller: native.FdPoller | null = null;
  private conn: Connection | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  private unsubscribeBroken: (() => void) | null = null;

  constructor(opts: VhostUserServerOptions) {
    super();
    this.device = opts.device;
    this.path = opts.path;
    this.client = opts.client === true;
    this.reconnectMs = opts.reconnectMs ?? 1000;
    this.maxMemSlots = opts.maxMemSlots ?? DEFAULT_MAX_MEM_SLOTS;
    const protocol = opts.protocolFeatures ?? OFFERED_PROTOCOL_FEATURES;
    this.protocolOffered = opts.config === true ? protocol | CONFIG_BIT : opts.config === false ? protocol & ~CONFIG_BIT : protocol;
    this.removeSocketOnClose = opts.removeSocketOnClose ?? true;
    this.payloadTimeoutMs = opts.payloadTimeoutMs ?? 2000;
    this.log = (opts.logger ?? silentLogger).child({ component: 'vhost-user', socket: opts.path });
  }

  /** The current connection, if a front-end is attached. */
  get connection(): Connection | null {
    return this.conn;
  }

  /**
   * Server mode: listens on the path (replacing a stale socket file, refusing a live one). Client mode:
   * starts connecting, retrying every reconnectMs until the VMM listens.
   */
  start(): void {
    this.unsubscribeBroken = this.device.onBroken((queue, code, message) => {
      this.log.warn({ queue, code, err: message }, 'device queue broken');
      this.conn?.vrings.signalError(queue);
    });
    if (this.client) {
      this.tryConnect();
      return;
    }
    removeStaleSocket(this.path);
    this.listenFd = native.unixListen(this.path);
    this.listenPoller = new native.FdPoller(this.listenFd, () => this.onAcceptable());
    this.listenPoller.start(native.POLL.READABLE);
    this.log.info({}, 'listening');
    this.emit('listening');
  }

  private onAcceptable(): void {
    if (this.conn || this.stopped) {
      this.listenPoller?.stop();
      return;
    }
    let fd: number;
    try {
      fd = native.unixAccept(this.listenFd);
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'accept failed');
      return;
    }
    if (fd < 0) return;
    this.listenPoller?.stop(); // one front-end at a time: the next waits in the backlog
    this.attach(fd);
  }

  private tryConnect(): void {
    this.retryTimer = null;
    if (this.stopped || this.conn) return;
    let fd: number;
    try {
      fd = native.unixConnect(this.path);
    } catch (e) {
      this.log.debug({ err: (e as Error).message }, 'connect failed; retrying');
      this.retryTimer = setTimeout(() => this.tryConnect(), this.reconnectMs);
      return;
    }
    this.attach(fd);
  }

  private attach(fd: number): void {
    native.setNonblocking(fd, true);
    const c = new Connection(this, this.device, fd);
    this.conn = c;
    this.metrics.connections++;
    c.log.info({}, this.client ? 'connected to the front-end' : 'front-end connected');
    this.emit('connection', c);
  }

  /** Called by a Connection when its teardown finished. */
  connectionClosed(c: Connection, error: VhostUserError | undefined): void {
    if (this.conn !== c) return;
    this.conn = null;
    this.emit('disconnect', { connection: c, error });
    if (this.stopped) return;
    if (this.client) this.retryTimer = setTimeout(() => this.tryConnect(), this.reconnectMs);
    else this.listenPoller?.start(native.POLL.READABLE);
  }

  /** Drops the connection (device reset, fds closed), stops listening, removes the socket file (unless told not to). */
  async close(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const c = this.conn;
    if (c) {
      c.drop('server closing');
      await c.closed;
    }
    this.listenPoller?.close();
    this.listenPoller = null;
    if (this.listenFd >= 0) {
      closeQuietly(this.listenFd);
      this.listenFd = -1;
      if (this.removeSocketOnClose) {
        try {
          unlinkSync(this.path);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.log.warn({ err: (e as Error).message }, 'could not remove the socket file');
        }
      }
    }
    this.unsubscribeBroken?.();
    this.unsubscribeBroken = null;
  }
}

/** Unlinks a socket file nobody listens on; refuses to touch a live socket or a non-socket file. */
function removeStaleSocket(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket; refusing to replace it`);
  let fd = -1;
  try {
    fd = native.unixConnect(path);
  } catch {
    unlinkSync(path); // ECONNREFUSED: stale
    return;
  }
  closeQuietly(fd);
  throw new Error(`${path} is a live socket (another back-end serves it)`);
}
