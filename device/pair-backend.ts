/**
 * The pair backend: two NetDevices in one process wired back to back (A's TX → B's RX and back), with
 * no syscall on the frame path and a per-frame filter hook, as in user-level bridging:
 *
 *   A.tx worker ──copy──▶ [ frame ring A→B (SharedArrayBuffer) ] ──copy──▶ B.rx worker
 *        │ filter(frame): ACCEPT → ring   DENY → dropped, counted   HOST → written to the host tap
 *   B.tx worker ──copy──▶ [ frame ring B→A ] ──copy──▶ A.rx worker
 *
 * Each frame ring is single-producer single-consumer: a power-of-two array of fixed slots with a head
 * (written by the producer) and a tail (written by the consumer), both only ever increasing; the ring
 * is empty when head == tail and full when head - tail == slots. Each slot holds a u32 length, the
 * 10-byte base virtio_net_hdr and the frame. The producer writes an eventfd after a burst, so the
 * consumer's worker can sleep on it like on a tap fd.
 *
 * The pair offers no offloads, so every header is plain and either side may be legacy or VERSION_1.
 * Main thread: PairBackend and its two sides. Worker: openPorts (registered in backends.ts), whose
 * ports copy through the iovec table's checked readFrame/writeFrame, never by hand.
 */
import * as native from '../native/index.ts';
import { NativeError } from '../native/errors.ts';
import type { IovecTable, MappingViews } from '../native/iovec.ts';
import type { Backend, FilterRef, FrameFilter, PortContext, PortSpec, Ports, RxPort, TxPort } from './backend.ts';
import type { NegotiatedFeatures } from './features.ts';
import { M } from './metrics.ts';

export type { FilterRef, FrameFilter } from './backend.ts';

/** What a FrameFilter returns for each frame; the `dir` it is called with is 0 for A→B, 1 for B→A. */
export const VERDICT = { ACCEPT: 0, HOST: 1, DENY: 2 } as const;

/** The PortSpec kind of pair ports (backends.ts registers openPorts under it). */
export const PAIR_KIND = 'pair';

/** A worker's way to its side of a pair: the two frame rings, its direction and header length. */
export interface PairPortSpec extends PortSpec {
  readonly kind: typeof PAIR_KIND;
  /** The ring this side's TX writes. */
  readonly out: FrameRingSpec;
  /** The ring this side's RX reads. */
  readonly in: FrameRingSpec;
  /** 0 for side A (A→B), 1 for side B: the filter's `dir`. */
  readonly dir: number;
  /** This side's virtio_net_hdr length (10 or 12). */
  readonly hdrLen: number;
  /** Where HOST verdicts go, or -1. */
  readonly hostFd: number;
}

const EIO = 5;
const EAGAIN = 11;

/** Base header bytes kept in a slot (flags … csum_offset). */
export const BASE_HDR = 10;
/** Slot layout: u32 length of header + frame, then the bytes. */
const SLOT_BYTES = 4 + BASE_HDR + 65_562 + 2;
/** Bytes of header + frame a slot holds (after its length word). */
export const SLOT_DATA = SLOT_BYTES - 4;
const SLOT_STRIDE = (SLOT_BYTES + 63) & ~63;
/** Ring header: head and tail as Int32 (Atomics), each on its own cache line. */
const HEAD = 0;
const TAIL = 16;
const RING_HDR = 128;

/** A frame ring's shared storage and wake-up fd. */
export interface FrameRingSpec {
  sab: SharedArrayBuffer;
  slots: number;
  wakeFd: number;
}

function createRing(slots: number): FrameRingSpec {
  return { sab: new SharedArrayBuffer(RING_HDR + slots * SLOT_STRIDE), slots, wakeFd: native.eventfdCreate({ nonblocking: true }) };
}

/** What owns in-process ports: their filter hook, and the fds they share until the last is closed. */
export interface PortOwner {
  readonly filter: FilterRef | undefined;
  release(): void;
}

/**
 * A Backend whose frames are copied between devices of this process (a side of a pair, a port of a
 * switch): one queue pair, no offloads (every header is plain), the owner's filter hook, and the
 * header length the driver negotiated, for the port's spec.
 */
export abstract class InProcessPort<O extends PortOwner> implements Backend {
  abstract readonly kind: string;
  readonly queuePairs = 1;
  protected readonly owner: O;
  protected hdrLen = 12;

  constructor(owner: O) {
    this.owner = owner;
  }

  supportedOffloads(): bigint {
    return 0n;
  }

  frameFilter(): FilterRef | undefined {
    return this.owner.filter;
  }

  configure(f: NegotiatedFeatures): void {
    this.hdrLen = f.hdrLen;
  }

  abstract port(pair: number): PortSpec;

  close(): void {
    this.owner.release();
  }
}

/** One side of a pair: a Backend for one of the two devices. */
class PairSide extends InProcessPort<PairBackend> {
  readonly kind = PAIR_KIND;
  private readonly out: FrameRingSpec;
  private readonly inp: FrameRingSpec;
  private readonly dir: number;

  constructor(owner: PairBackend, out: FrameRingSpec, inp: FrameRingSpec, dir: number) {
    super(owner);
    this.out = out;
    this.inp = inp;
    this.dir = dir;
  }

  port(pair: number): PairPortSpec {
    if (pair !== 0) throw new RangeError('a pair backend has one queue pair');
    return {
      kind: PAIR_KIND, out: this.out, in: this.inp, dir: this.dir, hdrLen: this.hdrLen, hostFd: this.owner.hostFd,
    };
  }
}

/** Options of {@link PairBackend}. */
export interface PairOptions {
  /** The per-frame hook; without it every frame is accepted. */
  filter?: FilterRef;
  /** An fd (a tap opened with IFF_VNET_HDR, header size 10) that HOST verdicts write to. */
  hostFd?: number;
  /** Slots per direction. Default 256. */
  slots?: number;
}

/** Two back-to-back backends: give `a` to one NetDevice and `b` to another. */
export class PairBackend {
  readonly a: Backend;
  readonly b: Backend;
  readonly filter: FilterRef | undefined;
  readonly hostFd: number;
  private readonly rings: FrameRingSpec[];
  private users = 2;

  constructor(opts: PairOptions = {}) {
    const slots = opts.slots ?? 256;
    if (!(Number.isInteger(slots) && slots > 0 && (slots & (slots - 1)) === 0)) throw new RangeError(`slots ${slots} must be a power of 2`);
    this.filter = opts.filter;
    this.hostFd = opts.hostFd ?? -1;
    const ab = createRing(slots);
    const ba = createRing(slots);
    this.rings = [ab, ba];
    this.a = new PairSide(this, ab, ba, 0);
    this.b = new PairSide(this, ba, ab, 1);
  }

  /** Called by each side's close(); the wake fds go with the second. */
  release(): void {
    if (--this.users === 0) for (const r of this.rings) native.close(r.wakeFd);
  }
}

/**
 * Worker side, TX: gathers each frame from guest memory into the next free slot of the outgoing ring,
 * runs the filter on it there, and commits the accepted ones with one head store and one eventfd write.
 */
class PairTxPort implements TxPort {
  private readonly ring: FrameRingSpec;
  private readonly ctl: Int32Array;
  private readonly u8: Uint8Array;
  private readonly dv: DataView;
  private readonly maps: MappingViews;
  private readonly mask: number;
  private readonly hdrLen: number;
  private readonly dir: number;
  private readonly hostFd: number;
  private readonly filter: FrameFilter | undefined;
  private readonly c: Float64Array;
  /** TxPort.refused: the frames of the last call the filter kept from the ring and counted. */
  refused = new Uint8Array(64);

  constructor(spec: PairPortSpec, ctx: PortContext) {
    this.ring = spec.out;
    this.ctl = new Int32Array(spec.out.sab, 0, RING_HDR / 4);
    this.u8 = new Uint8Array(spec.out.sab);
    this.dv = new DataView(spec.out.sab);
    this.maps = ctx.mappings;
    this.mask = spec.out.slots - 1;
    this.hdrLen = spec.hdrLen;
    this.dir = spec.dir;
    this.hostFd = spec.hostFd;
    this.filter = ctx.frameFilter;
    this.c = ctx.counters;
  }

  send(table: IovecTable, first: number): number {
    const ctl = this.ctl;
    let head = Atomics.load(ctl, HEAD >> 2);
    const tail = Atomics.load(ctl, TAIL >> 2);
    let done = 0;
    let committed = 0;
    if (this.refused.length < table.frames) this.refused = new Uint8Array(table.maxFrames);
    const refused = this.refused;
    for (let f = first; f < table.frames; f++) {
      if (head - tail > this.mask) break; // full: the rest is the caller's to count
      const slot = RING_HDR + (head & this.mask) * SLOT_STRIDE;
      // Keep only the 10-byte base of the guest's header, then the frame after the whole header.
      let total: number;
      try {
        const hdr = table.readFrame(f, 0, this.u8, slot + 4, BASE_HDR, this.maps);
        total = hdr + table.readFrame(f, this.hdrLen, this.u8, slot + 4 + hdr, SLOT_DATA - hdr, this.maps);
      } catch (e) {
        // A frame outside guest memory is refused like writev refuses it: thrown when it is the
        // caller's `first`, else left for the next call, after what came before it is committed.
        if (!(e instanceof NativeError) || f === first) throw e;
        break;
      }
      done++;
      const verdict = this.filter ? this.filter(this.u8, slot + 4 + BASE_HDR, total - BASE_HDR, this.dir) : VERDICT.ACCEPT;
      refused[f] = 0;
      if (verdict === VERDICT.ACCEPT) {
        this.dv.setUint32(slot, total, true);
        head++;
        committed++;
      } else if (verdict === VERDICT.HOST && this.hostFd >= 0) {
        if (writeToHost(this.hostFd, this.u8.subarray(slot + 4, slot + 4 + total), this.c)) this.c[M.txHost]! += 1;
        else refused[f] = 1; // counted as the backend's drop
      } else {
        // Not sent: counted here, and neither a frame nor bytes for the caller (TxPort.refused).
        this.c[M.txDropFiltered]! += 1;
        refused[f] = 1;
      }
    }
    if (committed > 0) {
      Atomics.store(ctl, HEAD >> 2, head);
      native.eventfdWrite(this.ring.wakeFd, 1);
    }
    return done;
  }
}

/**
 * Writes a HOST verdict's header and frame (`bytes`) to the host fd. A write that fails, would block
 * or is cut short loses that frame alone: it is counted in `c` as the backend's drop (errno in
 * backendErrno, EIO for a short write), and the frames around it go on. Shared with the switch.
 */
export function writeToHost(hostFd: number, bytes: Uint8Array, c: Float64Array): boolean {
  let n: number;
  try {
    n = native.fdWrite(hostFd, bytes);
  } catch (e) {
    if (!(e instanceof NativeError)) throw e;
    c[M.txDropBackend]! += 1;
    c[M.backendErrno] = e.errno;
    return false;
  }
  if (n === bytes.length) return true;
  c[M.txDropBackend]! += 1;
  c[M.backendErrno] = n < 0 ? EAGAIN : EIO;
  return false;
}

/**
 * Scatters a slot's base header and frame (`total` bytes at `src` of `u8`) into frame `f` of the table:
 * the base header, `pad` (zeros up to the device's header length), then the frame; as much as the
 * buffers hold, with the whole length reported, so that the device counts a frame that did not fit as
 * too big. Throws NativeError for buffers outside guest memory. Shared with the switch.
 */
export function scatterSlot(table: IovecTable, f: number, u8: Uint8Array, src: number, total: number, pad: Uint8Array, maps: MappingViews): void {
  table.writeFrame(f, 0, u8, src, BASE_HDR, maps);
  table.writeFrame(f, BASE_HDR, pad, 0, pad.length, maps);
  table.writeFrame(f, BASE_HDR + pad.length, u8, src + BASE_HDR, total - BASE_HDR, maps);
  table.bytes[f] = total + pad.length;
}

/**
 * Worker side, RX: scatters each waiting slot into one frame of the table: the base header, zeros up
 * to the device's header length, then the frame.
 */
class PairRxPort implements RxPort {
  readonly fd: number;
  readonly vnetHdrLen: number;
  private readonly ctl: Int32Array;
  private readonly u8: Uint8Array;
  private readonly dv: DataView;
  private readonly maps: MappingViews;
  private readonly mask: number;
  /** The header bytes past the base that the device's header has (num_buffers: 0 or 2), as zeros. */
  private readonly pad: Uint8Array;

  constructor(spec: PairPortSpec, ctx: PortContext) {
    this.fd = spec.in.wakeFd;
    this.vnetHdrLen = spec.hdrLen;
    this.ctl = new Int32Array(spec.in.sab, 0, RING_HDR / 4);
    this.u8 = new Uint8Array(spec.in.sab);
    this.dv = new DataView(spec.in.sab);
    this.maps = ctx.mappings;
    this.mask = spec.in.slots - 1;
    this.pad = new Uint8Array(spec.hdrLen - BASE_HDR);
  }

  recv(table: IovecTable, frames: number): number {
    const ctl = this.ctl;
    // Drain the wake-up first, then look: a frame committed after this look writes the fd again.
    native.eventfdRead(this.fd);
    const head = Atomics.load(ctl, HEAD >> 2);
    let tail = Atomics.load(ctl, TAIL >> 2);
    let f = 0;
    for (; f < frames && tail !== head; f++, tail++) {
      const slot = RING_HDR + (tail & this.mask) * SLOT_STRIDE;
      const total = this.dv.getUint32(slot, true);
      try {
        scatterSlot(table, f, this.u8, slot + 4, total, this.pad, this.maps);
      } catch (e) {
        if (!(e instanceof NativeError)) throw e;
        if (f > 0) break; // deliver what came before; this frame meets the next call
        // A frame that cannot be copied out is gone, as a tap's readv drops it on EFAULT.
        Atomics.store(ctl, TAIL >> 2, tail + 1);
        throw e;
      }
    }
    Atomics.store(ctl, TAIL >> 2, tail);
    return f;
  }
}

/** Worker side (OpenPorts, registered in backends.ts): the ports of one side of a pair. */
export function openPorts(spec: PairPortSpec, ctx: PortContext): Ports {
  return { tx: new PairTxPort(spec, ctx), rx: new PairRxPort(spec, ctx) };
}


/** Loads a filter hook named by a FilterRef (in the worker thread that will call it). */
export async function loadFilter(ref: FilterRef | undefined): Promise<FrameFilter | undefined> {
  if (!ref) return undefined;
  const mod = (await import(ref.module)) as Record<string, unknown>;
  const fn = mod[ref.export ?? 'filter'];
  if (typeof fn !== 'function') throw new TypeError(`filter module ${ref.module} exports no function "${ref.export ?? 'filter'}"`);
  return fn as FrameFilter;
}
