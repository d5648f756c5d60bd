/**
 * What rx-rig.ts and tx-rig.ts run their queue over, configured for the driver's features:
 *
 * - a tap in a namespace of its own, with an AF_PACKET socket on the namespace's side (frames in
 *   and out);
 * - or side A of a pair backend (device/pair-backend.ts), whose frames come from side B's TX port,
 *   as another device's TX worker would send them, and go to side B's RX port, read as B's RX worker
 *   reads them. Its RX port has no merged read, so MRG_RXBUF and the RX filter take the per-frame
 *   path there.
 *
 * A property runs many sequences; each builds a fresh rig (guest memory, driver ring, queue, loop),
 * as a driver reset does, while the backend stays, as a device's tap does across resets. LinkPool
 * hands the same link to run after run while each ends clean, and a fresh one after a run that did
 * not (it may have left frames in the tap or in the port).
 */
import { expect } from 'vitest';
import * as native from '../../native/index.ts';
import { IovecTable, MappingViews } from '../../native/iovec.ts';
import type { Backend, Ports } from '../../device/backend.ts';
import { openPorts } from '../../device/backends.ts';
import { PendingUsed } from '../../device/interrupt.ts';
import type { LoopFds } from '../../device/loops.ts';
import { createQueue } from '../../device/service.ts';
import type { DeviceQueue } from '../../vring/index.ts';
import { decode, mask, type FeatureName, type NegotiatedFeatures } from '../../device/features.ts';
import { M } from '../../device/metrics.ts';
import { PairBackend } from '../../device/pair-backend.ts';
import { TapBackend } from '../../device/tap-backend.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { createNetns, openPacketIn } from '../../harness/netns.ts';
import { DriverRing } from '../../harness/virtio-net.ts';
import type { RingFormat } from '../../vring/driver-queue.ts';
import type { FrameFilter } from '../../device/backend.ts';
import { trackBed } from '../helpers/bed.ts';

/** The tap's name inside its namespace. */
export const LINK_IF = 'lgrig0';

export type LinkKind = 'tap' | 'pair';

/** A tap or a pair backend that rigs run their queue over (the file's comment). */
export interface RigLink {
  kind: LinkKind;
  /** Where the rig's queue takes its port (pair 0). */
  backend: Backend;
  /** Puts a frame (Ethernet header on) where the rig's RX port reads it. */
  inject(frame: Uint8Array): void;
  /**
   * Frames of EtherType `type` that the rig's TX port sent, in order, until `count` came or `ms`
   * passed (a tap's frames reach the namespace in a softirq, which may run after the write returns;
   * a pair's are in its ring at once).
   */
  received(type: number, count: number, ms: number): Uint8Array[];
  /** The tap's AF_PACKET socket in the namespace (nonblocking; closed with it); -1 on a pair. */
  pkt: number;
  /** Set while a rig runs on it; that rig's clean close() clears it. */
  dirty: boolean;
  close(): void;
}

/** The features a rig negotiates: VERSION_1 and RING_EVENT_IDX, plus `extra` (and RING_PACKED for a packed ring). */
export function rigFeatures(format: RingFormat, extra: readonly FeatureName[] = []): NegotiatedFeatures {
  return decode(mask('VERSION_1', 'RING_EVENT_IDX', ...extra, ...(format === 'packed' ? (['RING_PACKED'] as const) : [])));
}

/** Makes a link (tracked: closed after the test); `prefix` names a tap's namespace, `slots` sizes a pair's rings (64). */
export function makeLink(prefix: string, f: NegotiatedFeatures, kind: LinkKind = 'tap', slots = 64): RigLink {
  return kind === 'pair' ? pairLink(f, slots) : tapInNs(prefix, f);
}

const etherType = (b: Uint8Array, at = 0): number => (b[at + 12]! << 8) | b[at + 13]!;

function tapInNs(prefix: string, f: NegotiatedFeatures): RigLink {
  const ns = createNetns(prefix);
  try {
    const backend = native.withNetns(ns.path, () => new TapBackend({ name: LINK_IF }));
    const rxBuf = new Uint8Array(4096);
    const link: RigLink = {
      kind: 'tap', backend, dirty: false, pkt: -1,
      inject(frame) {
        expect(native.fdWrite(link.pkt, frame)).toBe(frame.length);
      },
      received(type, count, ms) {
        const out: Uint8Array[] = [];
        const end = performance.now() + ms;
        const pktFds = Int32Array.of(link.pkt);
        while (out.length < count) {
          const n = native.fdRead(link.pkt, rxBuf);
          if (n < 0) {
            const left = end - performance.now();
            if (left <= 0) break;
            native.poll(pktFds, Math.ceil(left));
            continue;
          }
          // The namespace's own traffic on the link (IPv6 neighbour discovery) is not the test's.
          if (n >= 14 && etherType(rxBuf) === type) out.push(rxBuf.slice(0, n));
        }
        return out;
      },
      close() {
        backend.close();
        ns.destroy();
      },
    };
    trackBed(link);
    backend.configure(f);
    ns.exec('ip', 'link', 'set', LINK_IF, 'up');
    link.pkt = openPacketIn(ns, LINK_IF);
    return link;
  } catch (e) {
    ns.destroy();
    throw e;
  }
}

function pairLink(f: NegotiatedFeatures, slots: number): RigLink {
  const pair = new PairBackend({ slots });
  const ram = new GuestRam(1 << 16);
  const link = trackBed<RigLink>({
    kind: 'pair', backend: pair.a, dirty: false, pkt: -1, inject, received,
    close() {
      pair.a.close();
      pair.b.close();
      ram.close();
    },
  });
  pair.a.configure(f);
  pair.b.configure(f);
  // Side B's ports, as B's workers have them: TX sends a frame (zero header first) from B's guest
  // memory; RX reads one into it.
  const b = openPorts(pair.b.port(0), { counters: new Float64Array(M.COUNT), frameFilter: undefined, mappings: new MappingViews(native.mappingBuffer) });
  const tx = b.tx;
  const at = ram.alloc(f.hdrLen + 2048);
  const inAt = ram.alloc(f.hdrLen + 2048);
  const table = new IovecTable(1, 1);
  const inTable = new IovecTable(1, 1);
  function received(type: number, count: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    while (out.length < count) {
      inTable.reset();
      inTable.push(ram.mappingId, inAt - ram.gpa, f.hdrLen + 2048);
      inTable.endFrame();
      if (b.rx.recv(inTable, 1) === 0) break;
      const frame = ram.read(inAt + f.hdrLen, inTable.bytes[0]! - f.hdrLen);
      if (etherType(frame) === type) out.push(frame);
    }
    return out;
  }
  function inject(frame: Uint8Array): void {
    const bytes = new Uint8Array(f.hdrLen + frame.length);
    bytes.set(frame, f.hdrLen);
    ram.write(at, bytes);
    table.reset();
    table.push(ram.mappingId, at - ram.gpa, bytes.length);
    table.endFrame();
    expect(tx.send(table, 0), 'the pair\'s ring took the frame').toBe(1);
  }
  return link;
}

/** One link for a property's runs while they end clean (see the file's comment). */
export class LinkPool {
  private link: RigLink | null = null;
  private readonly prefix: string;
  private readonly f: NegotiatedFeatures;
  private readonly kind: LinkKind;

  private readonly slots: number | undefined;

  constructor(prefix: string, f: NegotiatedFeatures, kind: LinkKind = 'tap', slots?: number) {
    this.prefix = prefix;
    this.f = f;
    this.kind = kind;
    this.slots = slots;
  }

  take(): RigLink {
    if (this.link === null || this.link.dirty) {
      this.link?.close();
      this.link = makeLink(this.prefix, this.f, this.kind, this.slots);
    }
    this.link.dirty = true;
    return this.link;
  }
}

/** What a rig builds for its queue, whichever direction: the driver's ring over fresh guest memory, the device's side of it, the port. */
export interface RigBase {
  f: NegotiatedFeatures;
  link: RigLink;
  ram: GuestRam;
  drv: DriverRing;
  /** The queue's counters (device/metrics.ts M). */
  c: Float64Array;
  queue: DeviceQueue;
  pending: PendingUsed;
  ports: Ports;
  /** The loop's descriptors: the driver's kick, a control eventfd (a write ends the next sleep at once). */
  fds: LoopFds;
  close(): void;
}

/**
 * Builds a rig's base over `link` (a LinkPool's) or a link of its own, closed with it. The queue's
 * kicks are off, as while a worker serves. A clean close() marks the link clean for the next run.
 */
export function rigBase(opts: { format: RingFormat; size: number; slotSize: number; extra?: FeatureName[]; link?: RigLink; frameFilter?: FrameFilter }, prefix: string, index: number): RigBase {
  const closers: Array<() => void> = [];
  const close = (): void => {
    for (const f of closers.splice(0).reverse()) f();
  };
  try {
    const f = rigFeatures(opts.format, opts.extra);
    const link = opts.link ?? makeLink(prefix, f);
    closers.push(opts.link === undefined ? () => link.close() : () => {
      link.dirty = false; // closed by a run that ended clean
    });
    const ram = new GuestRam(4 << 20);
    closers.push(() => ram.close());
    const drv = new DriverRing(ram, index, opts.size, true, opts.slotSize, opts.format);
    closers.push(() => {
      native.close(drv.kickFd);
      native.close(drv.callFd);
    });
    const c = new Float64Array(M.COUNT);
    const queue = createQueue(f, drv.setup);
    queue.attach(ram.mem);
    // Kicks off while the worker serves, as after any sleep of its loop: avail_event stays where it was.
    queue.disableNotification();
    const ports = openPorts(link.backend.port(0), { counters: c, frameFilter: opts.frameFilter, mappings: new MappingViews(native.mappingBuffer) });
    const ctlFd = native.eventfdCreate({ nonblocking: true });
    closers.push(() => native.close(ctlFd));
    const fds: LoopFds = { kickFd: drv.kickFd, ctlFd, ctlFlag: new Int32Array(new SharedArrayBuffer(4)), busyPoll: 0 };
    return { f, link, ram, drv, c, queue, pending: new PendingUsed(queue, drv.callFd, c), ports, fds, close };
  } catch (e) {
    close();
    throw e;
  }
}
