/**
 * The dispatch table of the vhost-user back-end: one small handler per request, as libvhost-user's
 * vu_<name>_exec functions are. A handler decodes its payload (messages.ts), acts on the session
 * (the device hooks, the memory table, the vrings, the inflight buffer) and returns its reply, or
 * undefined when the request has none.
 *
 *   connection.ts: read ─▶ checks (protocol feature, payload size, fd count from the entry) ─▶ HANDLERS[request]
 *                  ─▶ reply, or the generic REPLY_ACK when NEED_REPLY asked for one
 *
 * Handlers throw VhostUserError for a broken rule; the connection answers, counts and drops. They
 * never close a message's fds: one they keep is take()n, the connection closes the rest.
 * Spec: QEMU docs/interop/vhost-user.rst, "Front-end message types" (each entry names its request),
 * "Ring states", "Memory access".
 */
import { names as featureNames } from '../../device/features.ts';
import type { Logger } from '../log.ts';
import { VhostUserError, VU } from './errors.ts';
import type { DeviceHooks } from './hooks.ts';
import type { InflightBuffer } from './inflight.ts';
import type { MemTable } from './mem-table.ts';
import { ADDR_LIMIT as VRING_ADDR_LIMIT } from '../../vring/index.ts';
import * as native from '../../native/index.ts';
import type { BackendIommu } from './iommu.ts';
import { Postcopy } from './postcopy.ts';
import {
  decodeConfig, decodeInflight, decodeIotlb, decodeLog, decodeMemTable, decodeSingleMemRegion, decodeU64, decodeVringAddr, decodeVringFile,
  decodeVringState, encodeConfig, encodeInflight, encodeMemTable, encodeSingleMemRegion, encodeU64, encodeVringState, F_LOG_ALL, F_PROTOCOL_FEATURES, IOTLB_TYPE, protocolNames, REQ,
  type ProtocolFeatureName, type WireMemRegion,
} from './messages.ts';
import type { Vrings } from './vrings.ts';

/** One request as read from the socket. */
export interface Message {
  request: number;
  flags: number;
  payload: Uint8Array;
  /** Received fds; a handler that keeps one sets its slot to -1 (see take()). The rest are closed. */
  fds: number[];
}

/** A reply payload, with fds when the reply carries some (GET_INFLIGHT_FD). */
export interface Reply {
  payload: Uint8Array;
  fds?: number[];
}

/** What a handler works on: the connection's state (libvhost-user's VuDev, as far as handlers go). */
export interface Session {
  readonly dev: DeviceHooks;
  readonly mem: MemTable;
  readonly vrings: Vrings;
  readonly inflight: InflightBuffer;
  readonly log: Logger;
  /** The server's settings and the counter handlers bump. */
  readonly server: { readonly protocolOffered: bigint; readonly maxMemSlots: number; readonly userfaultfd: number; readonly metrics: { rarp: number } };
  /** GET_FEATURES' answer: the device's bits plus VHOST_USER_F_PROTOCOL_FEATURES. */
  readonly offeredFeatures: bigint;
  features: bigint;
  /** SET_FEATURES was handled at least once since the connection or the last reset. */
  featuresSet: boolean;
  protocolFeatures: bigint;
  owner: boolean;
  mtu: number;
  /** Postcopy migration, from POSTCOPY_ADVISE to POSTCOPY_END (postcopy.ts). */
  postcopy: Postcopy | null;
  /** Behind an IOMMU: the IOTLB and the back-end channel (iommu.ts). */
  readonly iommu: BackendIommu;
}

type Handler = (c: Session, m: Message) => Promise<Reply | undefined> | Reply | undefined;

export interface Entry {
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

/** Takes fd `i` out of the message: the handler owns it now, and the connection will not close it. */
function take(m: Message, i: number): number {
  const fd = m.fds[i]!;
  m.fds[i] = -1;
  return fd;
}

const PROTOCOL_BIT = 1n << BigInt(F_PROTOCOL_FEATURES);
/** VIRTIO_F_ACCESS_PLATFORM: with it, ring and descriptor addresses are I/O virtual addresses. */
const ACCESS_PLATFORM_BIT = 1n << 33n;
/** Nothing lgnet maps lies at or above it (vring's ADDR_LIMIT). */
const ADDR_LIMIT = BigInt(VRING_ADDR_LIMIT);
const LOG_ALL_BIT = 1n << BigInt(F_LOG_ALL);
/** Bits of SET_FEATURES that belong to vhost-user, not to the device. */
const VHOST_BITS = PROTOCOL_BIT | LOG_ALL_BIT;

function u64Reply(v: bigint | number): Reply {
  return { payload: encodeU64(v) };
}

function checkConfigRange(dev: DeviceHooks, offset: number, size: number): void {
  if (offset + size > dev.configSize) {
    throw new VhostUserError(VU.CONFIG_RANGE, `config access ${offset}+${size} is outside the device's ${dev.configSize}-byte config space`);
  }
}

/**
 * SET_VRING_KICK, CALL and ERR: a ring index and an eventfd, or NOFD (-1: polling, or none). The index
 * is checked (vrings.ring throws) before the fd is taken, so a bad index leaves the fd to be closed.
 */
function vringFdEntry(set: (c: Session, index: number, fd: number) => Promise<void> | void): Entry {
  return {
    fds: (m) => (decodeVringFile(m.payload).noFd ? 0 : 1),
    async handle(c, m) {
      const f = decodeVringFile(m.payload);
      c.vrings.ring(f.index);
      await set(c, f.index, f.noFd ? -1 : take(m, 0));
      return undefined;
    },
  };
}

/**
 * Postcopy, listening: registers the memory table's new mappings with the userfaultfd, and returns
 * `wire` with each region's user address replaced by where it is mapped here, the answer the front-end
 * translates faults with. Nothing may touch the memory until it acknowledges (connection.ts).
 */
function postcopyBases(c: Session, wire: readonly WireMemRegion[]): WireMemRegion[] {
  const pc = c.postcopy!;
  const bases = pc.register(c.dev.memory?.regions ?? []);
  pc.awaitingAck = true;
  return wire.map((r) => {
    const base = bases.get(Number(r.gpa));
    if (base === undefined) throw new VhostUserError(VU.POSTCOPY_FAILED, `region 0x${r.gpa.toString(16)} is not mapped`);
    return { ...r, uaddr: BigInt(base) };
  });
}

/** The dispatch table: one small handler per request, as libvhost-user does. */
export const HANDLERS: Readonly<Partial<Record<number, Entry>>> = {
  [REQ.GET_FEATURES]: { replies: true, handle: (c) => u64Reply(c.offeredFeatures) },

  [REQ.SET_FEATURES]: {
    async handle(c, m) {
      const bits = decodeU64(m.payload);
      const extra = bits & ~c.offeredFeatures;
      if (extra !== 0n) {
        throw new VhostUserError(VU.FEATURES_NOT_OFFERED, `features 0x${extra.toString(16)} were not offered (offered 0x${c.offeredFeatures.toString(16)})`);
      }
      const protocol = (bits & PROTOCOL_BIT) !== 0n;
      const logAll = (bits & LOG_ALL_BIT) !== 0n;
      if (c.featuresSet && (bits & ~VHOST_BITS) === (c.features & ~VHOST_BITS)) {
        // The device's features stay: only VHOST_F_LOG_ALL may change (QEMU's migration start and
        // end), and the queues keep running, as DPDK's vhost does.
        c.features = bits;
        await c.dev.setLogging(logAll);
        return undefined;
      }
      await c.vrings.stopAll(); // features cannot change under running workers
      try {
        c.dev.setFeatures(bits & ~VHOST_BITS);
      } catch (e) {
        throw new VhostUserError(VU.FEATURES_NOT_OFFERED, (e as Error).message, { cause: e });
      }
      c.features = bits;
      c.featuresSet = true;
      // Behind an IOMMU from now on, or no longer: every ring is stopped, so each starts translating anew.
      const iommu = (bits & ACCESS_PLATFORM_BIT) !== 0n;
      c.dev.setIotlb?.(iommu ? c.iommu.iotlb : null);
      c.vrings.setIommu(iommu ? c.iommu.rings : null);
      // One line per change of the device's features (a connection sets them once or twice): what the
      // driver took, for whoever wonders why a guest runs without MRG_RXBUF or on packed rings.
      c.log.info({ features: featureNames(bits & ~VHOST_BITS) }, 'features negotiated');
      await c.dev.setLogging(logAll);
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
      c.dev.setIotlb?.(null);
      c.vrings.setIommu(null);
      c.iommu.iotlb.clear();
      c.features = 0n;
      c.featuresSet = false;
      return undefined;
    },
  },

  [REQ.SET_MEM_TABLE]: {
    fds: (m) => decodeMemTable(m.payload).length, // validates the count and the size first
    async handle(c, m) {
      const wire = decodeMemTable(m.payload);
      await c.mem.replace(wire, m.fds);
      m.fds.forEach((_, i) => take(m, i));
      if (c.postcopy?.listening) return { payload: encodeMemTable(postcopyBases(c, wire)) };
      await c.vrings.memoryChanged();
      return undefined;
    },
  },

  // The log is mapped by the device; the fd is closed after. The reply is always sent (QEMU waits for
  // it), as libvhost-user does: u64 0.
  [REQ.SET_LOG_BASE]: {
    fds: () => 1,
    replies: true,
    protocol: 'LOG_SHMFD',
    errorReply: encodeU64(1),
    async handle(c, m) {
      const { mmapSize, mmapOffset } = decodeLog(m.payload);
      // CVE-2020-10722: offset + size must not wrap, and all of it must be a usable address.
      if (mmapSize === 0n || mmapOffset + mmapSize > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new VhostUserError(VU.BAD_LOG, `dirty log of ${mmapSize} bytes at offset ${mmapOffset}: the size must be > 0 and offset + size below 2^53`);
      }
      try {
        await c.dev.setDirtyLog({ fd: m.fds[0]!, size: Number(mmapSize), offset: Number(mmapOffset) });
      } catch (e) {
        throw new VhostUserError(VU.BAD_LOG, `SET_LOG_BASE: ${(e as Error).message}`, { cause: e });
      }
      c.log.info({ size: Number(mmapSize), offset: Number(mmapOffset) }, 'dirty log installed');
      return u64Reply(0);
    },
  },

  [REQ.GET_MAX_MEM_SLOTS]: { replies: true, handle: (c) => u64Reply(c.server.maxMemSlots) },

  [REQ.ADD_MEM_REG]: {
    fds: () => 1,
    async handle(c, m) {
      const wire = decodeSingleMemRegion(m.payload);
      if (await c.mem.add(wire, m.fds[0]!)) take(m, 0); // else a duplicate: its fd is closed
      if (c.postcopy?.listening) return { payload: encodeSingleMemRegion(postcopyBases(c, [wire])[0]!) };
      await c.vrings.memoryChanged();
      return undefined;
    },
  },

  // "No file descriptors SHOULD be passed … the back-end MAY accept messages with one" (and closes it).
  [REQ.REM_MEM_REG]: {
    fds: () => [0, 1],
    async handle(c, m) {
      await c.mem.remove(decodeSingleMemRegion(m.payload));
      if (c.postcopy?.listening) {
        postcopyBases(c, []); // the removed mapping is forgotten; the acknowledgement follows
        return undefined;
      }
      await c.vrings.memoryChanged();
      return undefined;
    },
  },

  // Postcopy migration (postcopy.ts). QEMU sends ADVISE when the migration is set up, LISTEN when the
  // destination is about to run the guest, END once every page has arrived.
  [REQ.POSTCOPY_ADVISE]: {
    protocol: 'PAGEFAULT',
    replies: true,
    handle(c) {
      c.postcopy?.end(); // advised again: the earlier one is over
      c.postcopy = null; // and none is left if this one cannot be made
      c.postcopy = Postcopy.advise(c.server.userfaultfd);
      c.log.info({ uffd: c.postcopy.uffd }, 'postcopy advised: userfaultfd sent');
      return { payload: new Uint8Array(0), fds: [c.postcopy.uffd] };
    },
  },

  [REQ.POSTCOPY_LISTEN]: {
    protocol: 'PAGEFAULT',
    handle(c) {
      if (!c.postcopy) throw new VhostUserError(VU.POSTCOPY_STATE, 'POSTCOPY_LISTEN before POSTCOPY_ADVISE');
      c.postcopy.listening = true;
      c.log.info({}, 'postcopy listening');
      return undefined;
    },
  },

  [REQ.POSTCOPY_END]: {
    protocol: 'PAGEFAULT',
    handle(c) {
      c.postcopy?.end();
      c.postcopy = null;
      c.log.info({}, 'postcopy ended');
      return undefined;
    },
  },

  // The back-end channel: lgnet writes IOTLB misses on it (iommu.ts), and nothing else. The data
  // queues' workers write on it too: the device lets go of the old one before it is closed.
  [REQ.SET_SLAVE_REQ_FD]: {
    protocol: 'SLAVE_REQ',
    fds: () => 1,
    async handle(c, m) {
      let info: { domain: number; type: number; listening: boolean } | null = null;
      try {
        info = native.socketInfo(m.fds[0]!);
      } catch {
        /* not a socket */
      }
      if (!info || info.domain !== native.SOCK.AF_UNIX || info.type !== native.SOCK.STREAM || info.listening) {
        throw new VhostUserError(VU.BAD_CHANNEL_FD, 'SET_SLAVE_REQ_FD: the back-end channel must be a connected AF_UNIX stream socket (QEMU: socketpair); refused');
      }
      await c.dev.setIotlbMissSink?.(null); // if it throws, the fd is not taken: the message's fds are closed
      c.iommu.setChannel(take(m, 0));
      await c.dev.setIotlbMissSink?.(c.iommu.sink());
      return undefined;
    },
  },

  // Behind an IOMMU: the front-end adds mappings (UPDATE, its answer to a miss or its own push) and
  // takes them back (INVALIDATE). Rings that waited for a mapping look again after an update; queues
  // once what they wait for is all mapped, or was taken back (NetDevice.iotlbChanged).
  [REQ.IOTLB_MSG]: {
    async handle(c, m) {
      if ((c.features & ACCESS_PLATFORM_BIT) === 0n) {
        throw new VhostUserError(VU.BAD_IOTLB, 'IOTLB_MSG without VIRTIO_F_ACCESS_PLATFORM negotiated: ring addresses are not I/O virtual addresses here');
      }
      const msg = decodeIotlb(m.payload);
      const t = c.iommu.iotlb;
      if (msg.type === IOTLB_TYPE.UPDATE) {
        if (msg.size === 0n || msg.iova + msg.size > ADDR_LIMIT || msg.uaddr + msg.size > ADDR_LIMIT) {
          throw new VhostUserError(VU.BAD_IOTLB, `IOTLB update [0x${msg.iova.toString(16)}, +0x${msg.size.toString(16)}) → 0x${msg.uaddr.toString(16)} is empty or beyond 2^53`);
        }
        try {
          t.update(Number(msg.iova), Number(msg.size), Number(msg.uaddr), msg.perm);
        } catch (e) {
          throw new VhostUserError(VU.BAD_IOTLB, (e as Error).message, { cause: e });
        }
        c.dev.iotlbChanged?.();
        await c.vrings.iotlbChanged();
        return undefined;
      }
      if (msg.type === IOTLB_TYPE.INVALIDATE) {
        // Nothing is mapped at or above 2^53, so a range reaching past it is cut there. Size 0 is a
        // range that wrapped: QEMU 7.2 turns a guest's flush of its whole device IOTLB into iova 0,
        // size 0 (2^64 overflowed), which vhost's own [iova, iova + size - 1] reads as everything.
        if (msg.iova < ADDR_LIMIT) {
          const end = msg.size === 0n || msg.iova + msg.size > ADDR_LIMIT ? ADDR_LIMIT : msg.iova + msg.size;
          // A queue waiting for mappings asks again for what was taken back, not after its retry.
          if (t.invalidate(Number(msg.iova), Number(end - msg.iova)) > 0) c.dev.iotlbChanged?.();
        }
        return undefined;
      }
      throw new VhostUserError(VU.BAD_IOTLB, `IOTLB message type ${msg.type} is not one a front-end sends (UPDATE ${IOTLB_TYPE.UPDATE}, INVALIDATE ${IOTLB_TYPE.INVALIDATE})`);
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
      // QEMU forwards the guest's IOMMU invalidations only while the device runs: what the IOTLB holds
      // from now on may go stale unseen (a guest that reloads its driver maps new rings at old IOVAs).
      // Emptied, it is asked again for what is used.
      if (c.features & ACCESS_PLATFORM_BIT) c.iommu.iotlb.clear();
      return { payload: encodeVringState({ index: s.index, num: base }) };
    },
  },

  [REQ.SET_VRING_KICK]: vringFdEntry((c, index, fd) => c.vrings.setKick(index, fd)),
  [REQ.SET_VRING_CALL]: vringFdEntry((c, index, fd) => c.vrings.setCall(index, fd)),
  [REQ.SET_VRING_ERR]: vringFdEntry((c, index, fd) => c.vrings.setErr(index, fd)),

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
      checkConfigRange(c.dev, cfg.offset, cfg.size);
      return { payload: encodeConfig({ offset: cfg.offset, flags: cfg.flags, data: c.dev.readConfig(cfg.offset, cfg.size) }) };
    },
  },

  [REQ.SET_CONFIG]: {
    protocol: 'CONFIG',
    handle(c, m) {
      const cfg = decodeConfig(m.payload);
      checkConfigRange(c.dev, cfg.offset, cfg.size);
      try {
        c.dev.writeConfig(cfg.offset, cfg.data);
      } catch (e) {
        throw new VhostUserError(VU.CONFIG_RANGE, `SET_CONFIG at ${cfg.offset}+${cfg.size}: ${(e as Error).message}`, { cause: e });
      }
      return undefined;
    },
  },

  // After a migration, for a guest that cannot announce itself: one RARP broadcast on the backend.
  // A backend that cannot take it is logged, not fatal (the guest's own traffic teaches switches too).
  [REQ.SEND_RARP]: {
    protocol: 'RARP',
    handle(c, m) {
      const macBytes = m.payload.slice(0, 6);
      const mac = [...macBytes].map((b) => b.toString(16).padStart(2, '0')).join(':');
      c.server.metrics.rarp++;
      let sent = false;
      let why = 'the backend has no way to send frames of its own';
      try {
        sent = c.dev.announce(macBytes);
        if (!sent) why = 'the backend could not take the frame now';
      } catch (e) {
        why = (e as Error).message;
      }
      if (sent) c.log.info({ mac }, 'SEND_RARP: RARP announce sent');
      else c.log.warn({ mac, err: why }, 'SEND_RARP: no announce sent');
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
      const { fd, size } = await c.inflight.create(req.numQueues, req.queueSize);
      return { payload: encodeInflight({ mmapSize: size, mmapOffset: 0, numQueues: req.numQueues, queueSize: req.queueSize }, m.payload.length), fds: [fd] };
    },
  },

  [REQ.SET_INFLIGHT_FD]: {
    fds: () => 1,
    async handle(c, m) {
      await c.inflight.adopt(take(m, 0), decodeInflight(m.payload));
      return undefined;
    },
  },
};
