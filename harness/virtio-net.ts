/**
 * The harness's virtio-net guest driver: what a guest kernel's virtio_net driver does, in TypeScript,
 * over a GuestRam. It lays out the rings, posts RX buffers, sends frames (optionally split across
 * descriptors or through an indirect table), collects completions, merges MRG_RXBUF frames, and
 * waits on the call eventfds. Like QEMU's libqos driver, it can drive lgnet embedded (attach) or any
 * backend reached over vhost-user (queueSetups + the frontend).
 *
 * Ring format: split, or packed when the features include VIRTIO_F_RING_PACKED. Every queue is a
 * vring DriverVirtqueue (vring/driver-queue.ts), so nothing below depends on the format; a packed
 * queue's setup names its descriptor ring `desc`, its driver event area `avail` and its device event
 * area `used`, as vhost-user SET_VRING_ADDR carries them.
 *
 * IOMMU: with `dmaOffset` (VIRTIO_F_ACCESS_PLATFORM behind HarnessIommu) every descriptor and indirect
 * table address the queues write is an IOVA, gpa + dmaOffset; setups, slots and the driver's own reads
 * and writes stay guest physical (the front-end turns ring addresses into IOVAs itself).
 */
import * as native from '../native/index.ts';
import {
  createDriverQueue,
  DESC_ALIGN,
  DESC_SIZE,
  driverRingLayout,
  driverRingSpan,
  PACKED_DESC_SIZE,
  type DriverVirtqueue,
  type GuestBuffer,
  type Iotlb,
  type RingFormat,
} from '../vring/index.ts';
import type { NetDevice, QueueSetup } from '../device/net.ts';
import { hdrLenFor, has } from '../device/features.ts';
import type { GuestRam } from './guest-ram.ts';

/** virtio_net_hdr fields, for sending. */
export interface TxHeader {
  flags?: number;
  gsoType?: number;
  hdrLen?: number;
  gsoSize?: number;
  csumStart?: number;
  csumOffset?: number;
}

/** A received frame. */
export interface RxFrame {
  /** The virtio_net_hdr as received. */
  hdr: Uint8Array;
  /** The frame after the header. */
  frame: Uint8Array;
  /** num_buffers from the header (1 without MRG_RXBUF unless legacy). */
  numBuffers: number;
}

export interface NetDriverOptions {
  /** Features the driver accepts (a subset of what the device offered). */
  features: bigint;
  /** Entries per queue. Default 256. */
  queueSize?: number;
  /** Queue pairs to set up. Default 1. */
  pairs?: number;
  /** Bytes per RX buffer, header included. Default: 2048 with MRG_RXBUF, else room for a full frame. */
  rxBufferSize?: number;
  /** Set up the control queue (index 2·maxPairs). */
  ctrl?: { maxPairs: number };
  /**
   * Behind an IOMMU (VIRTIO_F_ACCESS_PLATFORM): descriptors and indirect tables carry the I/O virtual
   * address gpa + dmaOffset (HarnessIommu's `offset`) instead of the guest physical one. Default 0.
   */
  dmaOffset?: number;
}

/** Entries of each indirect table the driver keeps for TX. */
const INDIRECT_MAX = 64;

/** Largest TX frame plus header the driver can send. */
const TX_SLOT = 65_536 + 128;

/** How long blastTx polls an idle ring before it sleeps, by default. */
export const DEFAULT_SPIN_US = 50;

/**
 * A polling driver's loop over ring `r` for `seconds`: `drain` takes the completions there are and
 * re-posts buffers (returns how many). While completions keep coming, and for `spinUs` after the
 * last, used-buffer notifications stay off and the loop polls the ring, publishing and kicking what
 * it re-posts (DPDK's virtio PMD polls so, without ever sleeping). Then it turns them on and looks
 * once more before it sleeps on the call eventfd, so a completion published meanwhile is never
 * missed. A busy device thus signals a busy driver rarely, and an idle one at once. Leaves
 * notifications on.
 */
function pollRing(r: DriverRing, seconds: number, spinUs: number, drain: () => number): { frames: number; seconds: number } {
  const q = r.q;
  const callFds = Int32Array.of(r.callFd);
  let frames = 0;
  let armed = true;
  const t0 = performance.now();
  let t = t0;
  let last = t0;
  const spinMs = spinUs / 1000;
  // The spin stretches to twice the last gap between completions (to 1 ms), so that a device whose
  // bursts take longer than spinUs on a slow machine is still polled rather than woken for.
  let windowMs = spinMs;
  while (t - t0 < seconds * 1000) {
    const n = drain();
    frames += n;
    if (n) {
      if (armed) q.setInterrupts((armed = false));
      r.publishAndKick();
      if (spinMs > 0) windowMs = Math.min(Math.max(spinMs, 2 * (t - last)), 1);
      last = t;
    } else if (t - last < windowMs) {
      // Still within the spin: a busy device publishes its next burst within microseconds.
    } else if (!armed) {
      q.setInterrupts((armed = true)); // then one more round before sleeping
    } else if (native.poll(callFds, 5)) {
      native.eventfdRead(r.callFd);
    }
    t = performance.now();
  }
  if (!armed) q.setInterrupts(true);
  return { frames, seconds: (t - t0) / 1000 };
}

/** One queue as the driver sees it. */
export class DriverRing {
  /** The driver side of the ring, split or packed. */
  readonly q: DriverVirtqueue;
  readonly format: RingFormat;
  readonly index: number;
  readonly kickFd: number;
  readonly callFd: number;
  /** Where the ring lives (packed: avail = driver event area, used = device event area) and its eventfds. */
  readonly setup: QueueSetup;
  /** Buffer slot of each head (split) or buffer id (packed) in flight. */
  readonly slotOf: Int32Array;
  readonly slots: number[];
  private readonly freeSlots: number[] = [];

  /** `dmaOffset`: added to every address the queue writes into a descriptor (the IOVA behind an IOMMU). */
  constructor(ram: GuestRam, index: number, size: number, eventIdx: boolean, slotSize: number, format: RingFormat = 'split', dmaOffset = 0) {
    const l = driverRingLayout(format, size, ram.alloc(driverRingSpan(format, size) + 4096, 4096));
    this.q = createDriverQueue(ram.mem, { format, size, desc: l.desc, avail: l.avail, used: l.used, eventIdx, dmaOffset });
    this.q.init();
    this.format = format;
    this.index = index;
    this.kickFd = native.eventfdCreate({ nonblocking: true });
    this.callFd = native.eventfdCreate({ nonblocking: true });
    // lastAvail: the ring base a device starts from (a fresh packed ring's is not 0: both wrap counters are 1).
    this.setup = { size, desc: l.desc, avail: l.avail, used: l.used, kickFd: this.kickFd, callFd: this.callFd, lastAvail: this.q.initBase };
    this.slotOf = new Int32Array(size).fill(-1);
    this.slots = [];
    for (let i = 0; i < size; i++) {
      this.slots.push(slotSize > 0 ? ram.alloc(slotSize, 64) : 0);
      this.freeSlots.push(size - 1 - i);
    }
  }

  takeSlot(): number {
    return this.freeSlots.length ? this.freeSlots.pop()! : -1;
  }

  giveSlot(slot: number): void {
    this.freeSlots.push(slot);
  }

  /** Publishes what was added and kicks if the device asked for it. */
  publishAndKick(): void {
    this.q.publish();
    if (this.q.needsKick()) native.eventfdWrite(this.kickFd, 1);
  }

  /** Waits until the call eventfd fires or `timeoutMs` passes; true if it fired. */
  waitCall(timeoutMs: number): Promise<boolean> {
    return waitReadable(this.callFd, timeoutMs).then((ok) => {
      if (ok) native.eventfdRead(this.callFd);
      return ok;
    });
  }

  close(): void {
    native.close(this.kickFd);
    native.close(this.callFd);
  }
}

/** Resolves true when `fd` polls readable, false after `timeoutMs`. */
export function waitReadable(fd: number, timeoutMs: number): Promise<boolean> {
  if (native.poll([fd], 0)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const p = new native.FdPoller(fd, () => done(true));
    const timer = setTimeout(() => done(false), timeoutMs);
    let settled = false;
    function done(v: boolean): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      p.close();
      resolve(v);
    }
    p.start(native.POLL.READABLE);
  });
}

export class VirtioNetDriver {
  readonly ram: GuestRam;
  readonly features: bigint;
  /** Ring format of every queue: packed when the features include VIRTIO_F_RING_PACKED. */
  readonly format: RingFormat;
  readonly hdrLen: number;
  readonly mrg: boolean;
  readonly rxBufferSize: number;
  /** Added to every address written into a descriptor: 0, or the IOMMU's IOVA offset (NetDriverOptions.dmaOffset). */
  readonly dmaOffset: number;
  readonly rx: DriverRing[] = [];
  readonly tx: DriverRing[] = [];
  readonly ctrlRing: DriverRing | null = null;
  private readonly hdrScratch: Uint8Array;

  constructor(ram: GuestRam, opts: NetDriverOptions) {
    this.ram = ram;
    this.features = opts.features;
    this.hdrLen = hdrLenFor(opts.features);
    this.mrg = has(opts.features, 'MRG_RXBUF');
    const eventIdx = has(opts.features, 'RING_EVENT_IDX');
    const format: RingFormat = has(opts.features, 'RING_PACKED') ? 'packed' : 'split';
    this.format = format;
    const bigRx = has(opts.features, 'GUEST_TSO4') || has(opts.features, 'GUEST_TSO6') || has(opts.features, 'GUEST_UFO');
    this.rxBufferSize = opts.rxBufferSize ?? (this.mrg ? 2048 : this.hdrLen + (bigRx ? 65_562 : 9_018));
    const size = opts.queueSize ?? 256;
    const dma = (this.dmaOffset = opts.dmaOffset ?? 0);
    for (let p = 0; p < (opts.pairs ?? 1); p++) {
      this.rx.push(new DriverRing(ram, 2 * p, size, eventIdx, this.rxBufferSize, format, dma));
      this.tx.push(new DriverRing(ram, 2 * p + 1, size, eventIdx, TX_SLOT, format, dma));
    }
    if (opts.ctrl) this.ctrlRing = new DriverRing(ram, 2 * opts.ctrl.maxPairs, 64, eventIdx, 1024, format, dma);
    this.hdrScratch = new Uint8Array(12);
  }

  /** Every queue's setup, for NetDevice.setupQueue or a vhost-user frontend. */
  queueSetups(): Array<{ index: number; setup: QueueSetup }> {
    const out: Array<{ index: number; setup: QueueSetup }> = [];
    for (let p = 0; p < this.rx.length; p++) {
      out.push({ index: this.rx[p]!.index, setup: this.rx[p]!.setup });
      out.push({ index: this.tx[p]!.index, setup: this.tx[p]!.setup });
    }
    if (this.ctrlRing) out.push({ index: this.ctrlRing.index, setup: this.ctrlRing.setup });
    return out;
  }

  /**
   * Drives an embedded NetDevice: features, memory, queues, start; then posts RX buffers. `iotlb`:
   * behind an IOMMU (ACCESS_PLATFORM, a driver with `dmaOffset`), the table the device translates
   * through, given before the queues start; the caller fills it on the device's `iotlbMiss`.
   */
  async attach(dev: NetDevice, opts: { iotlb?: Iotlb } = {}): Promise<void> {
    dev.setFeatures(this.features);
    if (opts.iotlb) dev.setIotlb(opts.iotlb);
    await dev.setMemory([this.ram.region()]);
    for (const { index, setup } of this.queueSetups()) dev.setupQueue(index, setup);
    for (let p = 0; p < this.rx.length; p++) this.fillRx(p);
    await dev.start();
  }

  /** Posts RX buffers until the ring is full. Returns how many were posted. */
  fillRx(pair = 0): number {
    const r = this.rx[pair]!;
    let n = 0;
    for (;;) {
      const slot = r.takeSlot();
      if (slot < 0) break;
      const head = r.q.add([], [{ addr: r.slots[slot]!, len: this.rxBufferSize }]);
      if (head < 0) {
        r.giveSlot(slot);
        break;
      }
      r.slotOf[head] = slot;
      n++;
    }
    if (n) r.publishAndKick();
    return n;
  }

  /**
   * Queues one frame for TX: header + frame laid out contiguously in a buffer, then described as one
   * descriptor, or split at the byte offsets in `split` (ANY_LAYOUT), optionally via an indirect table.
   * Returns false when the ring is full. Call flushTx() (or pass kick: true) to publish.
   */
  send(frame: Uint8Array, opts: { pair?: number; hdr?: TxHeader; split?: number[]; indirect?: boolean; kick?: boolean } = {}): boolean {
    const r = this.tx[opts.pair ?? 0]!;
    if (opts.indirect && (opts.split?.length ?? 0) >= INDIRECT_MAX) throw new RangeError(`send: an indirect table holds at most ${INDIRECT_MAX} buffers`);
    this.reclaimTx(opts.pair ?? 0);
    const slot = r.takeSlot();
    if (slot < 0) return false;
    const at = r.slots[slot]!;
    const h = this.hdrScratch;
    const dv = new DataView(h.buffer);
    h.fill(0);
    const hdr = opts.hdr ?? {};
    h[0] = hdr.flags ?? 0;
    h[1] = hdr.gsoType ?? 0;
    dv.setUint16(2, hdr.hdrLen ?? 0, true);
    dv.setUint16(4, hdr.gsoSize ?? 0, true);
    dv.setUint16(6, hdr.csumStart ?? 0, true);
    dv.setUint16(8, hdr.csumOffset ?? 0, true);
    this.ram.write(at, h.subarray(0, this.hdrLen));
    this.ram.write(at + this.hdrLen, frame);
    const total = this.hdrLen + frame.length;
    const bufs: GuestBuffer[] = [];
    let prev = 0;
    for (const cut of [...(opts.split ?? []), total]) {
      if (cut > prev) bufs.push({ addr: at + prev, len: cut - prev });
      prev = cut;
    }
    const head = r.q.add(bufs, [], opts.indirect ? { indirectAt: this.indirectTable(r, slot, bufs.length) } : undefined);
    if (head < 0) {
      r.giveSlot(slot);
      return false;
    }
    r.slotOf[head] = slot;
    if (opts.kick !== false) r.publishAndKick();
    return true;
  }

  /** Indirect table of each TX buffer slot, per pair, allocated on first use (0: none yet). */
  private readonly indirectTables: Map<DriverRing, number[]> = new Map();

  /**
   * The indirect table that goes with TX buffer `slot`: it is in flight exactly as long as the slot,
   * so it is never rewritten under a device still reading it.
   */
  private indirectTable(r: DriverRing, slot: number, n: number): number {
    if (n > INDIRECT_MAX) throw new RangeError(`an indirect table of ${n} entries is larger than the driver's ${INDIRECT_MAX}`);
    let tables = this.indirectTables.get(r);
    if (!tables) this.indirectTables.set(r, (tables = new Array<number>(r.slots.length).fill(0)));
    // A table entry is 16 bytes in both formats; DESC_ALIGN suits both.
    if (tables[slot] === 0) tables[slot] = this.ram.alloc(INDIRECT_MAX * Math.max(DESC_SIZE, PACKED_DESC_SIZE), DESC_ALIGN);
    return tables[slot]!;
  }

  /** Publishes queued TX frames and kicks if needed. */
  flushTx(pair = 0): void {
    this.tx[pair]!.publishAndKick();
  }

  /** Takes TX completions; returns how many. */
  reclaimTx(pair = 0): number {
    const r = this.tx[pair]!;
    let n = 0;
    for (let head = r.q.popUsed(); head >= 0; head = r.q.popUsed()) {
      this.releaseTx(r, head);
      n++;
    }
    return n;
  }

  /** Gives the buffer slot of a completed send() back. */
  private releaseTx(r: DriverRing, head: number): void {
    const slot = r.slotOf[head]!;
    if (slot >= 0) r.giveSlot(slot);
    r.slotOf[head] = -1;
  }

  /** Waits until every TX frame has been completed, or the timeout. Returns the number still in flight. */
  async drainTx(pair = 0, timeoutMs = 5000): Promise<number> {
    const r = this.tx[pair]!;
    const deadline = Date.now() + timeoutMs;
    this.reclaimTx(pair);
    while (r.q.inFlight > 0 && Date.now() < deadline) {
      await r.waitCall(Math.min(100, deadline - Date.now()));
      this.reclaimTx(pair);
    }
    return r.q.inFlight;
  }

  /**
   * Keeps TX queue `pair` full of one frame for `seconds`, for benchmarks: the header and frame are
   * laid out once in every buffer slot, and each completed descriptor chain is re-posted at once, so
   * the device never waits for the driver. Blocks this thread, polling the ring with interrupts off
   * and sleeping on the call eventfd only after `spinUs` (default {@link DEFAULT_SPIN_US}) without a
   * completion; 0 asks for an interrupt whenever a round finds none. Returns the completions seen and
   * the time taken; the ring is left empty, with interrupts on.
   */
  blastTx(frame: Uint8Array, seconds: number, opts: { pair?: number; onStop?: () => void; spinUs?: number } = {}): { frames: number; seconds: number } {
    const pair = opts.pair ?? 0;
    const r = this.tx[pair]!;
    const q = r.q;
    this.reclaimTx(pair);
    const hdr = new Uint8Array(this.hdrLen);
    const bufs = r.slots.map((addr): [GuestBuffer] => {
      this.ram.write(addr, hdr);
      this.ram.write(addr + this.hdrLen, frame);
      return [{ addr, len: this.hdrLen + frame.length }];
    });
    const none: GuestBuffer[] = [];
    const slotOf = new Int32Array(q.size).fill(-1);
    // Chains still out from earlier use keep their slots; the free ones get a buffer each.
    for (let i = 0; i < bufs.length && q.freeCount > 0; i++) if (r.slotOf.indexOf(i) < 0) slotOf[q.add(bufs[i]!, none)] = i;
    const callFds = Int32Array.of(r.callFd);
    r.publishAndKick();
    const done = pollRing(r, seconds, opts.spinUs ?? DEFAULT_SPIN_US, () => {
      let n = 0;
      for (let h = q.popUsed(); h >= 0; h = q.popUsed()) {
        const slot = slotOf[h]!;
        if (slot >= 0) slotOf[q.add(bufs[slot]!, none)] = slot;
        else this.releaseTx(r, h);
        n++;
      }
      return n;
    });
    opts.onStop?.();
    // Let the device finish what is posted (bounded), and forget it: the slots are free again.
    const end = performance.now() + 2000;
    while (q.inFlight > 0 && performance.now() < end) {
      for (let h = q.popUsed(); h >= 0; h = q.popUsed()) if (slotOf[h]! < 0) this.releaseTx(r, h);
      if (q.inFlight > 0 && native.poll(callFds, 5)) native.eventfdRead(r.callFd);
    }
    return done;
  }

  /**
   * Recycles RX queue `pair`'s buffers for `seconds`, for benchmarks: each completed buffer is
   * re-posted at once, unread, so the device never waits for the driver. Blocks this thread, polling
   * as {@link blastTx} does, but by default (`spinUs` 0) sleeping as soon as a round finds nothing:
   * on a small machine a spinning driver takes the CPU that the traffic source needs. Returns the
   * completions seen and the time taken; the buffers stay posted.
   */
  sinkRx(seconds: number, opts: { pair?: number; onStop?: () => void; spinUs?: number } = {}): { frames: number; seconds: number } {
    const pair = opts.pair ?? 0;
    const done = pollRing(this.rx[pair]!, seconds, opts.spinUs ?? 0, () => this.recycleRx(pair, false));
    opts.onStop?.();
    return done;
  }

  /**
   * Re-posts every buffer RX queue `pair` has completed, unread (for benchmarks that drive another
   * queue from the same thread meanwhile); returns how many. Kicks the device when it re-posted any,
   * unless `kick` is false (sinkRx's polling publishes and kicks itself).
   */
  recycleRx(pair = 0, kick = true): number {
    const r = this.rx[pair]!;
    const q = r.q;
    const size = this.rxBufferSize;
    const none: GuestBuffer[] = [];
    let n = 0;
    for (let h = q.popUsed(); h >= 0; h = q.popUsed()) {
      const slot = r.slotOf[h]!;
      r.slotOf[h] = -1;
      r.slotOf[q.add(none, [{ addr: r.slots[slot]!, len: size }])] = slot;
      n++;
    }
    if (n > 0 && kick) r.publishAndKick();
    return n;
  }

  /** Collects received frames without waiting, and reposts their buffers. */
  receive(pair = 0): RxFrame[] {
    const r = this.rx[pair]!;
    const out: RxFrame[] = [];
    for (;;) {
      const head = r.q.popUsed();
      if (head < 0) break;
      const len = r.q.lastUsedLen;
      const slot = r.slotOf[head]!;
      r.slotOf[head] = -1;
      const first = this.ram.read(r.slots[slot]!, len);
      r.giveSlot(slot);
      if (len < this.hdrLen) {
        out.push({ hdr: first, frame: new Uint8Array(0), numBuffers: 0 });
        continue;
      }
      const hdr = first.slice(0, this.hdrLen);
      const numBuffers = this.hdrLen === 12 ? hdr[10]! | (hdr[11]! << 8) : 1;
      const parts = [first.subarray(this.hdrLen)];
      for (let i = 1; this.mrg && i < numBuffers; i++) {
        const h = r.q.popUsed();
        if (h < 0) throw new Error(`MRG_RXBUF frame announced ${numBuffers} buffers but only ${i} were used`);
        const s = r.slotOf[h]!;
        r.slotOf[h] = -1;
        parts.push(this.ram.read(r.slots[s]!, r.q.lastUsedLen));
        r.giveSlot(s);
      }
      const frame = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
      let o = 0;
      for (const p of parts) {
        frame.set(p, o);
        o += p.length;
      }
      out.push({ hdr, frame, numBuffers });
    }
    if (out.length) this.fillRx(pair);
    return out;
  }

  /** Receives until `count` frames arrived or the timeout passed. */
  async waitRx(count: number, opts: { pair?: number; timeoutMs?: number } = {}): Promise<RxFrame[]> {
    const pair = opts.pair ?? 0;
    const deadline = Date.now() + (opts.timeoutMs ?? 5000);
    const out = this.receive(pair);
    while (out.length < count && Date.now() < deadline) {
      await this.rx[pair]!.waitCall(Math.min(100, deadline - Date.now()));
      out.push(...this.receive(pair));
    }
    return out;
  }

  /** Sends a control command and waits for its ack (0 OK, 1 ERR). */
  async ctrl(cls: number, cmd: number, data: Uint8Array, timeoutMs = 2000): Promise<number> {
    const r = this.ctrlRing;
    if (!r) throw new Error('the driver was created without a control queue');
    const slot = r.takeSlot();
    const at = r.slots[slot]!;
    const cmdBytes = new Uint8Array(2 + data.length);
    cmdBytes[0] = cls;
    cmdBytes[1] = cmd;
    cmdBytes.set(data, 2);
    this.ram.write(at, cmdBytes);
    this.ram.write(at + 1000, new Uint8Array([0xee]));
    const head = r.q.add([{ addr: at, len: cmdBytes.length }], [{ addr: at + 1000, len: 1 }]);
    r.slotOf[head] = slot;
    r.publishAndKick();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const h = r.q.popUsed();
      if (h >= 0) {
        r.giveSlot(r.slotOf[h]!);
        return this.ram.read(at + 1000, 1)[0]!;
      }
      if (Date.now() > deadline) throw new Error('control command got no answer');
      await r.waitCall(50);
    }
  }

  /** Closes the eventfds (the RAM is the caller's). */
  close(): void {
    for (const r of [...this.rx, ...this.tx]) r.close();
    this.ctrlRing?.close();
  }
}
