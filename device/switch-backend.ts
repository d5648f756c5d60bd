/**
 * The switch backend: several NetDevices in one process on a learning Ethernet switch, with the pair
 * backend's per-frame filter hook and no system call per frame (one eventfd write per destination
 * port and burst):
 *
 *   port i's TX worker: copies the frame out of guest memory, asks filter(frame, dir = i):
 *     ACCEPT  (its source MAC is learned on port i, then)
 *             its destination MAC learned on port p (p ≠ i)     → port p's frame ring
 *             broadcast, multicast, or not learned (yet)        → every other port's ring (flooded)
 *     HOST    → written to the host tap (hostFd)                  DENY → dropped, counted
 *   port p's RX worker: scatters the frames of its ring into its guest's buffers.
 *
 * Each port's frame ring has many producers (every other port's TX worker) and one consumer (its RX
 * worker): a bounded ring whose slots carry a sequence number, so that a producer claims a slot with
 * one compare-and-swap and publishes it with one store, and the consumer takes slots in order as they
 * are published (a bounded multi-producer queue in the manner of Vyukov's). A full ring drops the
 * frame for that port alone, counted (`stats()`), so that one slow guest never stalls the others.
 *
 * The MAC table is one shared hash table (open addressing, four probes) that every TX worker reads
 * and writes; each entry is written under its own sequence lock, so a reader never takes a torn
 * address for a whole one (it floods instead). Only frames the filter accepted teach it a source. An
 * entry older than `ageSeconds` is forgotten, a MAC seen on another port moves at once, as a guest
 * that migrated is, and a port holds at most `maxMacsPerPort` entries and never pushes out another
 * port's live one, so that a guest sending from made-up addresses cannot overflow the table and have
 * the others' frames flooded to it. Like any learning switch it believes source addresses: a guest
 * that sends with another's MAC draws that MAC's frames until the other sends again; the filter hook
 * is where a VMM that must prevent it drops such frames.
 *
 * Like the pair, the switch offers no offloads, and either side of it may be legacy or VERSION_1.
 */
import * as native from '../native/index.ts';
import { NativeError } from '../native/errors.ts';
import type { IovecTable, MappingViews } from '../native/iovec.ts';
import type { Backend, FilterRef, FrameFilter, PortContext, PortSpec, Ports, RxPort, TxPort } from './backend.ts';
import { M } from './metrics.ts';
import { BASE_HDR, InProcessPort, SLOT_DATA, VERDICT, scatterSlot, writeToHost } from './pair-backend.ts';

/** The PortSpec kind of switch ports (backends.ts registers openPorts under it). */
export const SWITCH_KIND = 'switch';

/** What a port's workers share with the switch: every port's ring, the MAC table, the counters. */
export interface SwitchPortSpec extends PortSpec {
  readonly kind: typeof SWITCH_KIND;
  /** Every port's frame ring, by port number. */
  readonly rings: readonly SwitchRingSpec[];
  /** The MAC table (see MacTable). */
  readonly table: SharedArrayBuffer;
  /** Per source and destination port, frames the destination's full ring dropped (Float64, ports²). */
  readonly full: SharedArrayBuffer;
  /** This port's number: its ring is its RX, and the filter's `dir` for its TX. */
  readonly self: number;
  /** This port's virtio_net_hdr length (10 or 12). */
  readonly hdrLen: number;
  /** Where HOST verdicts go, or -1. */
  readonly hostFd: number;
  /** Seconds a learned MAC is kept without a frame from it. */
  readonly ageSeconds: number;
  /** MAC addresses one port may hold in the table. */
  readonly maxMacsPerPort: number;
  /** The switch's creation, in seconds since the epoch: the MAC table's clock counts from it. */
  readonly epoch: number;
}

/** A port's ring: its shared storage, slots (a power of 2) and wake-up eventfd. */
export interface SwitchRingSpec {
  sab: SharedArrayBuffer;
  slots: number;
  wakeFd: number;
}

const ENOBUFS = 105;
/** Slot: i32 sequence, u32 length of header + frame, then the bytes. */
const SLOT_HEAD = 8;
const SLOT_STRIDE = (SLOT_HEAD + SLOT_DATA + 63) & ~63;
/** Ring header: the producers' claim position and the consumer's position, on their own cache lines. */
const CLAIM = 0;
const TAKEN = 16;
const RING_HDR = 128;

function createRing(slots: number): SwitchRingSpec {
  const sab = new SharedArrayBuffer(RING_HDR + slots * SLOT_STRIDE);
  const i32 = new Int32Array(sab);
  // Slot k starts free for the producer that claims position k.
  for (let k = 0; k < slots; k++) i32[(RING_HDR + k * SLOT_STRIDE) >> 2] = k;
  return { sab, slots, wakeFd: native.eventfdCreate({ nonblocking: true }) };
}

/** MAC table entries (a power of 2), and the words of one: sequence, MAC high (with VALID), MAC low, port, second seen. */
const ENTRIES = 4096;
const WORDS = 8;
const PROBES = 4;
const VALID = 0x10000;
/** A MAC already on the right port is written again only this often (seconds), so learning costs a read. */
const REFRESH_S = 1;

/** The MAC at `at` of `b` as the table keeps it: its first two bytes with VALID, then its last four. */
const macHi = (b: Uint8Array, at: number): number => VALID | (b[at]! << 8) | b[at + 1]!;
const macLo = (b: Uint8Array, at: number): number => (b[at + 2]! << 24) | (b[at + 3]! << 16) | (b[at + 4]! << 8) | b[at + 5]!;

/**
 * The shared MAC table over an Int32Array: ENTRIES entries, then one count per port of the entries it
 * holds. Every TX worker learns and looks up through its own view. Writers take an entry's sequence
 * lock (odd while written) with one compare-and-swap and give up on contention (the next frame learns
 * it); readers retry a torn read a few times, then treat the MAC as unknown (flooded: never delivered
 * to a wrong port). A port learns into an empty entry, a stale one, or its own oldest, never over
 * another port's fresh entry, and holds at most `quota` entries: a guest that sends from many made-up
 * addresses cannot push the others' out of the table (which would flood their frames to it).
 */
class MacTable {
  private readonly t: Int32Array;
  private readonly held: Int32Array;
  private readonly quota: number;
  constructor(sab: SharedArrayBuffer, ports: number, quota: number) {
    this.t = new Int32Array(sab, 0, ENTRIES * WORDS);
    this.held = new Int32Array(sab, ENTRIES * WORDS * 4, ports);
    this.quota = quota;
  }

  /** Bytes of the table's storage for `ports` ports. */
  static bytes(ports: number): number {
    return ENTRIES * WORDS * 4 + ports * 4;
  }

  private static slot(hi: number, lo: number): number {
    return (Math.imul(lo ^ Math.imul(hi, 0x9e3779b1), 0x85ebca6b) >>> 20) & (ENTRIES - 1);
  }

  /** The entry at `e` (word index) read whole: its port, or -1 if it is not `hi:lo`, stale or torn. */
  private read(e: number, hi: number, lo: number, now: number, age: number): number {
    const t = this.t;
    for (let tries = 0; tries < 3; tries++) {
      const s = Atomics.load(t, e);
      if (s & 1) continue;
      const h = Atomics.load(t, e + 1);
      const l = Atomics.load(t, e + 2);
      const port = Atomics.load(t, e + 3);
      const seen = Atomics.load(t, e + 4);
      if (Atomics.load(t, e) !== s) continue;
      return h === hi && l === lo && now - seen < age ? port : -1;
    }
    return -1;
  }

  lookup(hi: number, lo: number, now: number, age: number): number {
    let e = MacTable.slot(hi, lo);
    for (let k = 0; k < PROBES; k++, e = (e + 1) & (ENTRIES - 1)) {
      const p = this.read(e * WORDS, hi, lo, now, age);
      if (p >= 0) return p;
    }
    return -1;
  }

  /** Learns `hi:lo` on `port` (called by that port's TX worker alone). */
  learn(hi: number, lo: number, port: number, now: number, age: number): void {
    const t = this.t;
    const base = MacTable.slot(hi, lo);
    const full = Atomics.load(this.held, port) >= this.quota;
    let victim = -1;
    let rank = 0; // 3 the MAC's own entry, 2 empty, 1 stale (oldest first), 0 this port's oldest
    let oldest = Infinity;
    for (let k = 0; k < PROBES && rank < 3; k++) {
      const e = ((base + k) & (ENTRIES - 1)) * WORDS;
      const h = Atomics.load(t, e + 1);
      const owner = Atomics.load(t, e + 3);
      const seen = Atomics.load(t, e + 4);
      let r: number;
      if (h === hi && Atomics.load(t, e + 2) === lo) {
        if (owner === port && now - seen < REFRESH_S) return;
        r = 3;
      } else if ((h & VALID) === 0) r = full ? -1 : 2;
      else if (owner === port) r = 0;
      else if (now - seen >= age) r = full ? -1 : 1;
      else continue; // another port's fresh entry: never taken
      if (r < 0) continue;
      if (victim < 0 || r > rank || (r === rank && seen < oldest)) {
        victim = e;
        rank = r;
        oldest = seen;
      }
    }
    if (victim < 0) return;
    const s = Atomics.load(t, victim);
    if (s & 1 || Atomics.compareExchange(t, victim, s, s + 1) !== s) return; // another writer: next frame
    // Under the lock: whose entry this was, for the counts (another writer may have changed it since the scan).
    const was = Atomics.load(t, victim + 1) & VALID ? Atomics.load(t, victim + 3) : -1;
    if (was !== port && Atomics.load(this.held, port) >= this.quota) {
      Atomics.store(t, victim, s); // over quota: leave it as it was
      return;
    }
    Atomics.store(t, victim + 1, hi);
    Atomics.store(t, victim + 2, lo);
    Atomics.store(t, victim + 3, port);
    Atomics.store(t, victim + 4, now);
    Atomics.store(t, victim, s + 2);
    if (was !== port) {
      Atomics.add(this.held, port, 1);
      if (was >= 0) Atomics.sub(this.held, was, 1);
    }
  }
}

/** Options of {@link SwitchBackend}. */
export interface SwitchOptions {
  /** Ports, one NetDevice each (2 to 64). */
  ports: number;
  /** The per-frame hook (`dir` is the sending port); without it every frame is accepted. */
  filter?: FilterRef;
  /** An fd (a tap opened with IFF_VNET_HDR, header size 10) that HOST verdicts write to. */
  hostFd?: number;
  /** Slots of each port's ring. Default 256. */
  slots?: number;
  /** Seconds a learned MAC is kept without a frame from it. Default 300 (Linux bridges' ageing time). */
  ageSeconds?: number;
  /**
   * MAC addresses one port may hold in the table at once (1 to 4096). Default 64. Past it, the port's
   * new sources take its own oldest entries or are not learned (frames for them are flooded).
   */
  maxMacsPerPort?: number;
}

/** One port of a switch: the Backend of one NetDevice. */
class SwitchPort extends InProcessPort<SwitchBackend> {
  readonly kind = SWITCH_KIND;
  private readonly self: number;

  constructor(owner: SwitchBackend, self: number) {
    super(owner);
    this.self = self;
  }

  port(pair: number): SwitchPortSpec {
    if (pair !== 0) throw new RangeError('a switch port has one queue pair');
    return { kind: SWITCH_KIND, ...this.owner.shared(), self: this.self, hdrLen: this.hdrLen };
  }
}

/**
 * A learning switch between NetDevices of this process: give `ports[i]` to the i-th NetDevice.
 * `stats()` says, per port, how many frames its full ring dropped.
 */
export class SwitchBackend {
  readonly ports: readonly Backend[];
  readonly filter: FilterRef | undefined;
  readonly hostFd: number;
  readonly ageSeconds: number;
  readonly maxMacsPerPort: number;
  private readonly rings: SwitchRingSpec[];
  private readonly table: SharedArrayBuffer;
  private readonly full: SharedArrayBuffer;
  private readonly epoch = Math.floor(Date.now() / 1000);
  private users: number;

  constructor(opts: SwitchOptions) {
    const n = opts.ports;
    if (!(Number.isInteger(n) && n >= 2 && n <= 64)) throw new RangeError(`ports ${String(n)} must be an integer in [2, 64]`);
    const slots = opts.slots ?? 256;
    if (!(Number.isInteger(slots) && slots > 0 && (slots & (slots - 1)) === 0)) throw new RangeError(`slots ${slots} must be a power of 2`);
    const age = opts.ageSeconds ?? 300;
    if (!(Number.isInteger(age) && age >= 1)) throw new RangeError(`ageSeconds ${String(age)} must be a positive integer`);
    this.filter = opts.filter;
    this.hostFd = opts.hostFd ?? -1;
    this.ageSeconds = age;
    const quota = opts.maxMacsPerPort ?? 64;
    if (!(Number.isInteger(quota) && quota >= 1 && quota <= ENTRIES)) throw new RangeError(`maxMacsPerPort ${String(quota)} must be an integer in [1, ${ENTRIES}]`);
    this.maxMacsPerPort = quota;
    this.table = new SharedArrayBuffer(MacTable.bytes(n));
    this.full = new SharedArrayBuffer(n * n * 8);
    this.rings = [];
    try {
      for (let i = 0; i < n; i++) this.rings.push(createRing(slots));
    } catch (e) {
      for (const r of this.rings) native.close(r.wakeFd);
      throw e;
    }
    this.users = n;
    this.ports = Array.from({ length: n }, (_, i) => new SwitchPort(this, i));
  }

  /** What every port's spec carries. */
  shared(): Pick<SwitchPortSpec, 'rings' | 'table' | 'full' | 'hostFd' | 'ageSeconds' | 'maxMacsPerPort' | 'epoch'> {
    return { rings: this.rings, table: this.table, full: this.full, hostFd: this.hostFd, ageSeconds: this.ageSeconds, maxMacsPerPort: this.maxMacsPerPort, epoch: this.epoch };
  }

  /** Per port: frames dropped because its ring was full when another port sent to it. */
  stats(): Array<{ port: number; ringFull: number }> {
    const n = this.rings.length;
    const f = new Float64Array(this.full);
    return Array.from({ length: n }, (_, p) => {
      let sum = 0;
      for (let src = 0; src < n; src++) sum += f[src * n + p]!;
      return { port: p, ringFull: sum };
    });
  }

  /** Called by each port's close(); the wake fds go with the last. */
  release(): void {
    if (--this.users === 0) for (const r of this.rings) native.close(r.wakeFd);
  }
}

/**
 * Worker side, TX: stages each frame, asks the filter, learns an accepted frame's source, and
 * publishes it into the ring of each port it goes to; one eventfd write per port reached, after the
 * burst.
 */
class SwitchTxPort implements TxPort {
  private readonly rings: ReadonlyArray<{ i32: Int32Array; u8: Uint8Array; dv: DataView; mask: number; wakeFd: number }>;
  private readonly table: MacTable;
  private readonly full: Float64Array;
  private readonly self: number;
  private readonly hdrLen: number;
  private readonly hostFd: number;
  private readonly age: number;
  private readonly epoch: number;
  private readonly stage = new Uint8Array(SLOT_DATA);
  private readonly maps: MappingViews;
  private readonly filter: FrameFilter | undefined;
  private readonly c: Float64Array;
  private readonly reached: Uint8Array;
  refused = new Uint8Array(64);

  constructor(spec: SwitchPortSpec, ctx: PortContext) {
    this.rings = spec.rings.map((r) => ({ i32: new Int32Array(r.sab), u8: new Uint8Array(r.sab), dv: new DataView(r.sab), mask: r.slots - 1, wakeFd: r.wakeFd }));
    this.table = new MacTable(spec.table, spec.rings.length, spec.maxMacsPerPort);
    this.full = new Float64Array(spec.full, spec.self * spec.rings.length * 8, spec.rings.length);
    this.self = spec.self;
    this.hdrLen = spec.hdrLen;
    this.hostFd = spec.hostFd;
    this.age = spec.ageSeconds;
    this.epoch = spec.epoch;
    this.maps = ctx.mappings;
    this.filter = ctx.frameFilter;
    this.c = ctx.counters;
    this.reached = new Uint8Array(spec.rings.length);
  }

  send(table: IovecTable, first: number): number {
    const stage = this.stage;
    const now = Math.floor(Date.now() / 1000) - this.epoch;
    if (this.refused.length < table.frames) this.refused = new Uint8Array(table.maxFrames);
    const refused = this.refused;
    let done = 0;
    for (let f = first; f < table.frames; f++) {
      let total: number;
      try {
        const hdr = table.readFrame(f, 0, stage, 0, BASE_HDR, this.maps);
        total = hdr + table.readFrame(f, this.hdrLen, stage, hdr, SLOT_DATA - hdr, this.maps);
      } catch (e) {
        // As the pair: a frame outside guest memory is thrown when it is `first`, else left for the next call.
        if (!(e instanceof NativeError) || f === first) throw e;
        break;
      }
      done++;
      refused[f] = 0;
      const d = BASE_HDR;
      const verdict = this.filter ? this.filter(stage, d, total - d, this.self) : VERDICT.ACCEPT;
      if (verdict === VERDICT.ACCEPT) {
        // Only what the filter lets onto the switch teaches it a source (the TX service passes only
        // frames of at least an Ethernet header).
        if ((stage[d + 6]! & 1) === 0) this.table.learn(macHi(stage, d + 6), macLo(stage, d + 6), this.self, now, this.age);
        if (this.forward(total, now) === 0) refused[f] = 1;
      } else if (verdict === VERDICT.HOST && this.hostFd >= 0) {
        if (writeToHost(this.hostFd, stage.subarray(0, total), this.c)) this.c[M.txHost]! += 1;
        else refused[f] = 1;
      } else {
        this.c[M.txDropFiltered]! += 1;
        refused[f] = 1;
      }
    }
    const reached = this.reached;
    for (let p = 0; p < reached.length; p++) {
      if (reached[p] === 0) continue;
      reached[p] = 0;
      native.eventfdWrite(this.rings[p]!.wakeFd, 1);
    }
    return done;
  }

  /**
   * Puts the staged frame in the ring of the port its destination was learned on, or of every other
   * port. Returns how many rings took it; a frame none took is counted here (filtered: no port to go
   * to, or its destination is on the port it came from; the backend's: every ring it went to was full).
   */
  private forward(total: number, now: number): number {
    const s = this.stage;
    const d = BASE_HDR;
    let to = -1;
    if ((s[d]! & 1) === 0) to = this.table.lookup(macHi(s, d), macLo(s, d), now, this.age);
    if (to === this.self) {
      this.c[M.txDropFiltered]! += 1;
      return 0;
    }
    let took = 0;
    let tried = 0;
    for (let p = to < 0 ? 0 : to; p < this.rings.length; p++) {
      if (p === this.self) continue;
      tried++;
      if (this.publish(p, total)) {
        took++;
        this.reached[p] = 1;
      } else {
        this.full[p]! += 1;
      }
      if (to >= 0) break;
    }
    if (took === 0 && tried > 0) {
      this.c[M.txDropBackend]! += 1;
      this.c[M.backendErrno] = ENOBUFS;
    }
    return took;
  }

  /** Claims port p's next free slot, copies the staged frame in and publishes it; false when full. */
  private publish(p: number, total: number): boolean {
    const r = this.rings[p]!;
    const i32 = r.i32;
    for (;;) {
      const pos = Atomics.load(i32, CLAIM >> 2);
      const slot = RING_HDR + (pos & r.mask) * SLOT_STRIDE;
      const dif = (Atomics.load(i32, slot >> 2) - pos) | 0;
      if (dif < 0) return false; // the consumer has not freed it: full
      if (dif > 0) continue; // another producer claimed it first
      if (Atomics.compareExchange(i32, CLAIM >> 2, pos, (pos + 1) | 0) !== pos) continue;
      r.u8.set(this.stage.subarray(0, total), slot + SLOT_HEAD);
      r.dv.setUint32(slot + 4, total, true);
      Atomics.store(i32, slot >> 2, (pos + 1) | 0);
      return true;
    }
  }
}

/** Worker side, RX: takes the published slots of its port's ring in order and scatters each into one frame. */
class SwitchRxPort implements RxPort {
  readonly fd: number;
  readonly vnetHdrLen: number;
  private readonly i32: Int32Array;
  private readonly u8: Uint8Array;
  private readonly dv: DataView;
  private readonly mask: number;
  private readonly slots: number;
  private readonly maps: MappingViews;
  private readonly pad: Uint8Array;

  constructor(spec: SwitchPortSpec, ctx: PortContext) {
    const r = spec.rings[spec.self]!;
    this.fd = r.wakeFd;
    this.vnetHdrLen = spec.hdrLen;
    this.i32 = new Int32Array(r.sab);
    this.u8 = new Uint8Array(r.sab);
    this.dv = new DataView(r.sab);
    this.mask = r.slots - 1;
    this.slots = r.slots;
    this.maps = ctx.mappings;
    this.pad = new Uint8Array(spec.hdrLen - BASE_HDR);
  }

  recv(table: IovecTable, frames: number): number {
    const i32 = this.i32;
    // Drain the wake-up first, then look: a slot published after this look writes the fd again.
    native.eventfdRead(this.fd);
    let pos = Atomics.load(i32, TAKEN >> 2);
    let f = 0;
    for (; f < frames; f++, pos = (pos + 1) | 0) {
      const slot = RING_HDR + (pos & this.mask) * SLOT_STRIDE;
      if (Atomics.load(i32, slot >> 2) !== ((pos + 1) | 0)) break; // not published (yet)
      const total = this.dv.getUint32(slot + 4, true);
      try {
        scatterSlot(table, f, this.u8, slot + SLOT_HEAD, total, this.pad, this.maps);
      } catch (e) {
        if (!(e instanceof NativeError)) throw e;
        if (f > 0) break; // deliver what came before; this frame meets the next call
        // A frame that cannot be copied out is gone, as a tap's readv drops it on EFAULT.
        Atomics.store(i32, slot >> 2, (pos + this.slots) | 0);
        Atomics.store(i32, TAKEN >> 2, (pos + 1) | 0);
        throw e;
      }
      // The slot goes back to the producers, for the position one lap on.
      Atomics.store(i32, slot >> 2, (pos + this.slots) | 0);
    }
    Atomics.store(i32, TAKEN >> 2, pos);
    return f;
  }
}

/** Worker side (OpenPorts, registered in backends.ts): the ports of one switch port. */
export function openPorts(spec: SwitchPortSpec, ctx: PortContext): Ports {
  return { tx: new SwitchTxPort(spec, ctx), rx: new SwitchRxPort(spec, ctx) };
}
