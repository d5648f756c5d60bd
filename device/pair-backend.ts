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
 */
import * as native from '../native/index.ts';
import { IOVEC_WORDS, type IovecTable } from '../native/iovec.ts';
import type { Backend, PortSpec, RxPort, TxPort } from './backend.ts';
import type { NegotiatedFeatures } from './features.ts';
import { M } from './metrics.ts';

/** Filter verdicts. */
export const VERDICT = { ACCEPT: 0, HOST: 1, DENY: 2 } as const;

/**
 * The per-frame hook: `frame[off, off+len)` is the Ethernet frame (no virtio header); `dir` is 0 for
 * A→B and 1 for B→A. Runs inside the TX worker thread, so it is named by module, not passed as a
 * function: `{ module: 'file:///…/filter.ts', export: 'filter' }`.
 */
export type FrameFilter = (frame: Uint8Array, off: number, len: number, dir: number) => number;

/** Where the filter hook lives. */
export interface FilterRef {
  module: string;
  export?: string;
}

/** Base header bytes kept in a slot (flags … csum_offset). */
const BASE_HDR = 10;
/** Slot layout: u32 length of header + frame, then the bytes. */
const SLOT_BYTES = 4 + BASE_HDR + 65_562 + 2;
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

/** One side of a pair: a Backend for one of the two devices. */
class PairSide implements Backend {
  readonly kind = 'pair';
  readonly queuePairs = 1;
  private readonly out: FrameRingSpec;
  private readonly inp: FrameRingSpec;
  private readonly dir: number;
  private readonly owner: PairBackend;
  private hdrLen = 12;

  constructor(owner: PairBackend, out: FrameRingSpec, inp: FrameRingSpec, dir: number) {
    this.owner = owner;
    this.out = out;
    this.inp = inp;
    this.dir = dir;
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

  port(pair: number): PortSpec {
    if (pair !== 0) throw new RangeError('a pair backend has one queue pair');
    return {
      kind: 'pair', out: this.out, in: this.inp, dir: this.dir, hdrLen: this.hdrLen, hostFd: this.owner.hostFd,
    };
  }

  close(): void {
    this.owner.release();
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

/** Worker side: copies between guest memory (iovec tables) and the shared rings. */
class Mappings {
  private readonly views = new Map<number, Uint8Array>();
  get(id: number): Uint8Array {
    let v = this.views.get(id);
    if (!v) {
      v = new Uint8Array(native.mappingBuffer(id));
      this.views.set(id, v);
    }
    return v;
  }
}

const TWO32 = 0x1_0000_0000;

class PairTxPort implements TxPort {
  private readonly ring: FrameRingSpec;
  private readonly ctl: Int32Array;
  private readonly u8: Uint8Array;
  private readonly dv: DataView;
  private readonly maps = new Mappings();
  private readonly mask: number;
  private readonly hdrLen: number;
  private readonly dir: number;
  private readonly hostFd: number;
  private readonly filter: FrameFilter | undefined;
  private readonly c: Float64Array;

  constructor(spec: Extract<PortSpec, { kind: 'pair' }>, filter: FrameFilter | undefined, counters: Float64Array) {
    this.ring = spec.out;
    this.ctl = new Int32Array(spec.out.sab, 0, RING_HDR / 4);
    this.u8 = new Uint8Array(spec.out.sab);
    this.dv = new DataView(spec.out.sab);
    this.mask = spec.out.slots - 1;
    this.hdrLen = spec.hdrLen;
    this.dir = spec.dir;
    this.hostFd = spec.hostFd;
    this.filter = filter;
    this.c = counters;
  }

  send(table: IovecTable, first: number): number {
    const ctl = this.ctl;
    let head = Atomics.load(ctl, HEAD >> 2);
    const tail = Atomics.load(ctl, TAIL >> 2);
    const e = table.entries;
    let done = 0;
    let committed = 0;
    for (let f = first; f < table.frames; f++) {
      if (head - tail > this.mask) break; // full: the rest is the caller's to count
      const slot = RING_HDR + (head & this.mask) * SLOT_STRIDE;
      // Gather header + frame into the slot, keeping only the 10-byte base of the guest's header.
      let at = slot + 4;
      let pos = 0; // logical offset in the guest's header + frame
      const hdrLen = this.hdrLen;
      const end = table.frameEnd[f]!;
      for (let k = f === 0 ? 0 : table.frameEnd[f - 1]!; k < end; k++) {
        const w = k * IOVEC_WORDS;
        const src = this.maps.get(e[w]!);
        const off = e[w + 1]! + e[w + 2]! * TWO32;
        const len = Math.min(e[w + 3]!, slot + SLOT_BYTES - at);
        const next = pos + len;
        if (pos < BASE_HDR) {
          const n = Math.min(next, BASE_HDR) - pos;
          this.u8.set(src.subarray(off, off + n), at);
          at += n;
        }
        const from = Math.max(pos, hdrLen);
        if (from < next) {
          this.u8.set(src.subarray(off + from - pos, off + len), at);
          at += next - from;
        }
        pos = next;
      }
      const total = at - slot - 4;
      done++;
      const verdict = this.filter ? this.filter(this.u8, slot + 4 + BASE_HDR, total - BASE_HDR, this.dir) : VERDICT.ACCEPT;
      if (verdict === VERDICT.ACCEPT) {
        this.dv.setUint32(slot, total, true);
        head++;
        committed++;
      } else if (verdict === VERDICT.HOST && this.hostFd >= 0) {
        native.fdWrite(this.hostFd, this.u8.subarray(slot + 4, slot + 4 + total));
        this.c[M.txHost]! += 1;
      } else {
        this.c[M.txDropFiltered]! += 1;
      }
    }
    if (committed > 0) {
      Atomics.store(ctl, HEAD >> 2, head);
      native.eventfdWrite(this.ring.wakeFd, 1);
    }
    return done;
  }
}

class PairRxPort implements RxPort {
  readonly fd: number;
  readonly vnetHdrLen: number;
  private readonly ctl: Int32Array;
  private readonly u8: Uint8Array;
  private readonly dv: DataView;
  private readonly maps = new Mappings();
  private readonly mask: number;

  constructor(spec: Extract<PortSpec, { kind: 'pair' }>) {
    this.fd = spec.in.wakeFd;
    this.vnetHdrLen = spec.hdrLen;
    this.ctl = new Int32Array(spec.in.sab, 0, RING_HDR / 4);
    this.u8 = new Uint8Array(spec.in.sab);
    this.dv = new DataView(spec.in.sab);
    this.mask = spec.in.slots - 1;
  }

  recv(table: IovecTable, frames: number): number {
    const ctl = this.ctl;
    // Drain the wake-up first, then look: a frame committed after this look writes the fd again.
    native.eventfdRead(this.fd);
    const head = Atomics.load(ctl, HEAD >> 2);
    let tail = Atomics.load(ctl, TAIL >> 2);
    const e = table.entries;
    const pad = this.vnetHdrLen - BASE_HDR;
    let f = 0;
    for (; f < frames && tail !== head; f++, tail++) {
      const slot = RING_HDR + (tail & this.mask) * SLOT_STRIDE;
      const total = this.dv.getUint32(slot, true);
      // Lay out base header, zero padding up to the device's header length, then the frame.
      const want = total + pad;
      const hdrLen = BASE_HDR + pad;
      const src = slot + 4;
      let pos = 0; // logical offset in the guest's header + frame
      const end = table.frameEnd[f]!;
      for (let k = f === 0 ? 0 : table.frameEnd[f - 1]!; k < end && pos < want; k++) {
        const w = k * IOVEC_WORDS;
        const dst = this.maps.get(e[w]!);
        const off = e[w + 1]! + e[w + 2]! * TWO32;
        const next = Math.min(pos + e[w + 3]!, want);
        if (pos < BASE_HDR) {
          const n = Math.min(next, BASE_HDR) - pos;
          dst.set(this.u8.subarray(src + pos, src + pos + n), off);
        }
        const z0 = Math.max(pos, BASE_HDR);
        const z1 = Math.min(next, hdrLen);
        if (z0 < z1) dst.fill(0, off + z0 - pos, off + z1 - pos);
        const from = Math.max(pos, hdrLen);
        if (from < next) dst.set(this.u8.subarray(src + from - pad, src + next - pad), off + from - pos);
        pos = next;
      }
      // Report the whole length even if it did not fit: the device counts that as too big.
      table.bytes[f] = total + pad;
    }
    Atomics.store(ctl, TAIL >> 2, tail);
    return f;
  }
}

/** Worker side: the ports of a pair PortSpec. */
export function openPairPorts(spec: Extract<PortSpec, { kind: 'pair' }>, filter: FrameFilter | undefined, counters: Float64Array): { tx: TxPort; rx: RxPort } {
  return { tx: new PairTxPort(spec, filter, counters), rx: new PairRxPort(spec) };
}

/** Loads a filter hook named by a FilterRef (in the worker thread that will call it). */
export async function loadFilter(ref: FilterRef | undefined): Promise<FrameFilter | undefined> {
  if (!ref) return undefined;
  const mod = (await import(ref.module)) as Record<string, unknown>;
  const fn = mod[ref.export ?? 'filter'];
  if (typeof fn !== 'function') throw new TypeError(`filter module ${ref.module} exports no function "${ref.export ?? 'filter'}"`);
  return fn as FrameFilter;
}
