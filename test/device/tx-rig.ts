/**
 * One TX queue whose loop runs in the test's own thread (device/loops.ts TxLoop over TxService), over
 * real parts: the harness's driver ring in guest memory shared with the native side, real eventfds,
 * and a link (rig-link.ts) that sees what the device sent: a tap in a namespace with an AF_PACKET
 * socket on the namespace's side, or a pair backend whose other side's RX port reads it. As rx-rig.ts
 * does for RX, a test calls `loop.pass()` itself, and a frame observer plugged into the service runs
 * at a chosen point of a burst.
 */
import { expect } from 'vitest';
import * as native from '../../native/index.ts';
import type { FrameFilter } from '../../device/backend.ts';
import type { FeatureName } from '../../device/features.ts';
import { TxLoop } from '../../device/loops.ts';
import { ServiceContext } from '../../device/service.ts';
import { TxService } from '../../device/tx.ts';
import { DriverRing } from '../../harness/virtio-net.ts';
import type { RingFormat } from '../../vring/driver-queue.ts';
import { trackBed } from '../helpers/bed.ts';
import { rigBase, type RigLink } from './rig-link.ts';

/** Where in a slot an indirect table goes (past the largest frame a test writes). */
const INDIRECT_AT = 1984;
/** Most buffers one chain of this rig has (its indirect table's room). */
export const MAX_PIECES = 4;

/** One chain as a driver posts it. */
export interface TxChain {
  /** virtio_net_hdr and frame, as the device should read them (at most 1984 bytes). */
  bytes: Uint8Array;
  /** Where `bytes` is cut into buffers (ascending offsets inside it; at most MAX_PIECES − 1). */
  cuts: number[];
  /** A device-writable buffer of this many bytes after the readable ones (a malformed TX chain). */
  writable?: number;
  /** Through an indirect table (RING_INDIRECT_DESC). */
  indirect?: boolean;
}

export interface TxRig {
  drv: DriverRing;
  ctx: ServiceContext<unknown>;
  loop: TxLoop;
  /** The queue's counters (device/metrics.ts M). */
  c: Float64Array;
  /** The loop's control eventfd: a write ends its next sleep at once. */
  ctlFd: number;
  /** Whether the ring has room for a chain (a slot, and its descriptors). */
  fits(ch: TxChain): boolean;
  /** Adds a chain (it must fit), not yet visible to the device. */
  add(ch: TxChain): void;
  /** Publishes what was added; true when the driver kicked. */
  publish(): boolean;
  /** Takes the used entries so far: their lengths, in order. */
  used(): number[];
  /** Frames of EtherType `type` the link got from the device, in order, until `count` came or `ms` passed (RigLink.received). */
  received(type: number, count: number, ms: number): Uint8Array[];
  close(): void;
}

/**
 * Builds the rig and tracks it (closed after the test). Features: rigFeatures(format, extra). Over
 * `link` (LinkPool) if given, else over a tap of its own, closed with it. `frameFilter` is the hook a
 * pair's TX port runs on each frame.
 */
export function txRig(opts: { format: RingFormat; size: number; extra?: FeatureName[]; link?: RigLink; frameFilter?: FrameFilter }): TxRig {
  const { f, link, ram, drv, c, queue, pending, ports, fds, close } = rigBase({ ...opts, slotSize: 2048 }, 'lgtxrig', 1);
  try {
    const ctx = new ServiceContext({ queue, mem: ram.mem, f, counters: c, pending, port: ports.tx, burst: 64 });
    const loop = new TxLoop(new TxService(ctx, { backendHdrLen: f.hdrLen }), fds);
    const ctlFd = fds.ctlFd;
    let free = opts.size;
    const descs = (ch: TxChain): number => (ch.indirect ? 1 : ch.cuts.length + 1 + (ch.writable ? 1 : 0));
    const rig: TxRig = {
      drv, ctx: ctx as ServiceContext<unknown>, loop, c, ctlFd, close,
      fits: (ch) => free > 0 && drv.q.freeCount >= descs(ch),
      add(ch) {
        const slot = drv.takeSlot();
        if (slot < 0) throw new Error('no free driver slot');
        free--;
        const base = drv.slots[slot]!;
        ram.write(base, ch.bytes);
        const ends = [...ch.cuts, ch.bytes.length];
        const readable = ends.map((end, i) => ({ addr: base + (i === 0 ? 0 : ends[i - 1]!), len: end - (i === 0 ? 0 : ends[i - 1]!) }));
        const writable = ch.writable ? [{ addr: base + ch.bytes.length, len: ch.writable }] : [];
        const head = drv.q.add(readable, writable, ch.indirect ? { indirectAt: base + INDIRECT_AT } : undefined);
        if (head < 0) throw new Error('no free descriptors (fits() first)');
        drv.slotOf[head] = slot;
      },
      publish() {
        drv.q.publish();
        const kick = drv.q.needsKick();
        if (kick) native.eventfdWrite(drv.kickFd, 1);
        return kick;
      },
      used() {
        const out: number[] = [];
        for (let h = drv.q.popUsed(); h >= 0; h = drv.q.popUsed()) {
          const slot = drv.slotOf[h]!;
          expect(slot, `used entry ${h} names no chain in flight`).toBeGreaterThanOrEqual(0);
          drv.slotOf[h] = -1;
          out.push(drv.q.lastUsedLen);
          drv.giveSlot(slot);
          free++;
        }
        return out;
      },
      received: (type, count, ms) => link.received(type, count, ms),
    };
    return trackBed(rig);
  } catch (e) {
    close();
    throw e;
  }
}
