/**
 * harness/dirty-log.ts — checks a back-end's dirty log for live migration: does it mark every guest
 * page it writes? The harness plays the VMM's side of the log, and an auditor compares guest RAM with
 * a snapshot to find pages that changed behind the log's back.
 *
 *   DirtyLog        the VMM's bitmap: a memfd shared with SET_LOG_BASE, read and fetch-and-cleared here
 *   DirtyLogAudit   snapshot RAM ─ traffic ─▶ diff page by page ─▶ changed, not driver-written,
 *                   not marked: reported with what lives there (used ring of queue 0, RX buffer 3 …)
 *                   sync() plays pre-copy rounds during the traffic: collect the log, re-copy those
 *                   pages into the snapshot; a mark made before its write then shows as a lost write
 *
 *   memfd   [ offset bytes (zero) | bitmap: size bytes | tail bytes (zero) ]
 *   bitmap  page p = gpa >> 12 is bit (p & 7) of byte (p >> 3): QEMU's little-endian u64 words
 *
 * Why a diff and not a list of expected writes: it needs no knowledge of the back-end. Whatever the
 * back-end writes that the driver did not shows up as changed bytes; only the driver's own writes (its
 * descriptor tables, avail rings, TX buffers) are excluded, byte by byte, from the layout of a
 * VirtioNetDriver or from ranges the test names. A write that leaves a byte as it was is invisible to a
 * diff; require() names ranges that must be marked regardless (the RX buffers a frame went into,
 * found with usedNotTaken()).
 *
 * The bit layout is written here again, from the spec, on purpose: an oracle that shared lgnet's
 * vring/dirty-log.ts would repeat its mistakes.
 *
 * Spec: QEMU docs/interop/vhost-user.rst, "Migration" (VHOST_F_LOG_ALL, VHOST_VRING_F_LOG,
 * VHOST_USER_SET_LOG_BASE, LOG_SHMFD) and its "Dirty log" description; QEMU hw/virtio/vhost.c
 * (vhost_log_chunk, the u64 words, fetch-and-clear per word in vhost_dev_sync_region).
 */
import * as native from '../native/index.ts';
import type { GuestRam } from './guest-ram.ts';
import type { DriverRing, VirtioNetDriver } from './virtio-net.ts';

/** Bytes per logged page (the spec's VHOST_LOG_PAGE). */
export const DIRTY_PAGE_SIZE = 4096;
/** Bits of one log word as QEMU allocates the log (vhost_log_chunk_t is a u64). */
const WORD_BITS = 64;
/** The bytes of a TX buffer slot of VirtioNetDriver, when a queue of one entry leaves no stride to measure. */
const TX_SLOT_FALLBACK = 65_536 + 128;

let logSerial = 0;

/** Options of {@link DirtyLog}. */
export interface DirtyLogOptions {
  /**
   * Bytes of zeroes in the memfd before the bitmap: SET_LOG_BASE's mmap_offset. Page-aligned (a
   * back-end maps the log at it). Default 0.
   */
  offset?: number;
  /** Bitmap bytes (SET_LOG_BASE's mmap_size). Default: enough for the coverage, in whole u64 words. */
  size?: number;
  /** Bytes of zeroes after the bitmap, to catch a back-end that writes past mmap_size. Default 0. */
  tail?: number;
  /** memfd name (it shows in /proc/<pid>/maps). Default lgnet-dirty-log-<n>, unique in this process. */
  name?: string;
}

/**
 * The VMM's dirty log: a bitmap in a memfd that a back-end maps (send `fd`, `size`, `offset` with
 * SET_LOG_BASE, e.g. VhostUserFrontend.setLogBase or startDirtyLog). Marks from the back-end land in
 * the shared pages; this side reads them, and collect()s them the way QEMU does.
 */
export class DirtyLog {
  /** The memfd holding the log (offset + size + tail bytes). */
  readonly fd: number;
  /** Bitmap bytes: SET_LOG_BASE mmap_size. */
  readonly size: number;
  /** Where the bitmap starts in the memfd: SET_LOG_BASE mmap_offset. */
  readonly offset: number;
  /** Zero bytes after the bitmap in the memfd. */
  readonly tail: number;
  /** The memfd's name, as /proc/<pid>/maps shows it (`/memfd:<name> (deleted)`). */
  readonly name: string;
  /** Pages the bitmap covers: guest physical addresses [0, pages · 4096). */
  readonly pages: number;
  private readonly mappingId: number;
  private readonly file: Uint8Array;
  private readonly bits: Uint8Array;
  /** The bitmap as 32-bit words, for word-wise fetch-and-clear; the bytes past the last whole word are read through `bits`. */
  private readonly words: Int32Array;
  private closed = false;

  /**
   * Bitmap bytes that cover guest physical addresses [0, end): one bit per page, in whole u64 words
   * (QEMU's vhost_get_log_size).
   */
  static sizeFor(end: number): number {
    if (!Number.isSafeInteger(end) || end < 0) throw new RangeError(`log coverage ${end} is not a guest physical address`);
    return Math.max(1, Math.ceil(Math.ceil(end / DIRTY_PAGE_SIZE) / WORD_BITS)) * (WORD_BITS / 8);
  }

  /**
   * A zeroed log covering `cover`: a GuestRam (up to its highest address), or the highest guest
   * physical address end of any region.
   */
  constructor(cover: GuestRam | number, opts: DirtyLogOptions = {}) {
    const end = typeof cover === 'number' ? cover : cover.gpa + cover.size;
    this.offset = opts.offset ?? 0;
    this.size = opts.size ?? DirtyLog.sizeFor(end);
    this.tail = opts.tail ?? 0;
    if (!Number.isSafeInteger(this.offset) || this.offset < 0 || this.offset % DIRTY_PAGE_SIZE !== 0) {
      throw new RangeError(`log offset ${this.offset} must be a page-aligned byte count`);
    }
    if (!Number.isSafeInteger(this.size) || this.size < 1) throw new RangeError(`log size ${this.size} must be at least 1 byte`);
    if (!Number.isSafeInteger(this.tail) || this.tail < 0) throw new RangeError(`log tail ${this.tail} must be a byte count`);
    this.name = opts.name ?? `lgnet-dirty-log-${process.pid}-${++logSerial}`;
    this.pages = this.size * 8;
    const total = this.offset + this.size + this.tail;
    this.fd = native.memfdCreate(this.name, total);
    try {
      this.mappingId = native.mmap(this.fd, 0, total);
    } catch (e) {
      native.closeQuietly(this.fd);
      throw e;
    }
    const buffer = native.mappingBuffer(this.mappingId);
    this.file = new Uint8Array(buffer, 0, total);
    this.bits = new Uint8Array(buffer, this.offset, this.size);
    // offset is page-aligned, so the words are aligned as Int32Array needs.
    this.words = new Int32Array(buffer, this.offset, this.size >>> 2);
  }

  /** Whether the page holding `gpa` is marked. Addresses past the bitmap are never marked. */
  isDirty(gpa: number): boolean {
    const p = Math.floor(gpa / DIRTY_PAGE_SIZE);
    return p >= 0 && p < this.pages && (Atomics.load(this.bits, p >>> 3) & (1 << (p & 7))) !== 0;
  }

  /** Guest physical addresses of the marked pages, ascending; the log is left as it is. */
  dirtyPages(): number[] {
    return this.scan(false);
  }

  /**
   * Takes the marked pages and clears them: each 32-bit word with one atomic exchange, as QEMU's
   * vhost_dev_sync_region does with u64 words (the same bits), so a mark that races with the
   * collection lands either in this answer or in the next, never nowhere. Returns their guest
   * physical addresses, ascending.
   */
  collect(): number[] {
    return this.scan(true);
  }

  /**
   * Clears the whole bitmap. Not atomic with a back-end's marks in flight (those may be lost): use it
   * while the back-end is quiet, or collect() instead.
   */
  clear(): void {
    this.bits.fill(0);
  }

  /** Marks every page of [gpa, gpa+len), atomically: what a back-end does (tests of the auditor use it). */
  mark(gpa: number, len: number): void {
    if (len <= 0) return;
    const first = Math.floor(gpa / DIRTY_PAGE_SIZE);
    const last = Math.min(Math.floor((gpa + len - 1) / DIRTY_PAGE_SIZE), this.pages - 1);
    for (let p = Math.max(0, first); p <= last; p++) Atomics.or(this.bits, p >>> 3, 1 << (p & 7));
  }

  /** Non-zero bytes in the memfd outside the bitmap: a back-end that ignored mmap_offset or mmap_size. */
  strayBytes(): number {
    let n = 0;
    for (let i = 0; i < this.offset; i++) if (this.file[i] !== 0) n++;
    for (let i = this.offset + this.size; i < this.file.length; i++) if (this.file[i] !== 0) n++;
    return n;
  }

  /** Unmaps the log and closes the memfd (a back-end's own mapping of it stays valid). Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.munmap(this.mappingId);
    native.closeQuietly(this.fd);
  }

  private scan(clear: boolean): number[] {
    const out: number[] = [];
    const w = this.words;
    for (let i = 0; i < w.length; i++) {
      if (Atomics.load(w, i) === 0) continue;
      const v = clear ? Atomics.exchange(w, i, 0) : Atomics.load(w, i);
      // Little-endian words: bit b of word i is bit (b & 7) of byte 4i + (b >> 3), i.e. page 32i + b.
      for (let b = 0; b < 32; b++) if (v & (1 << b)) out.push((i * 32 + b) * DIRTY_PAGE_SIZE);
    }
    for (let byte = w.length * 4; byte < this.size; byte++) {
      if (Atomics.load(this.bits, byte) === 0) continue;
      const v = clear ? Atomics.exchange(this.bits, byte, 0) : Atomics.load(this.bits, byte);
      for (let b = 0; b < 8; b++) if (v & (1 << b)) out.push((byte * 8 + b) * DIRTY_PAGE_SIZE);
    }
    return out;
  }
}

// ---- the auditor ---------------------------------------------------------------------------------------

/** A guest physical range and what lives there. */
export interface AuditRange {
  gpa: number;
  len: number;
  /** e.g. "used ring of queue 0", "RX buffer 3 of queue 0". */
  what: string;
}

/** A page that had to be marked and is not. */
export interface UnloggedPage {
  /** Guest physical address of the page. */
  gpa: number;
  /** What lives on the page (the labels of the ranges it overlaps), or ["unlabelled"]. */
  what: string[];
  /** Bytes on the page that changed since the snapshot outside driver-written ranges. */
  changedBytes: number;
  /** Labels of require()d ranges that cover the page (empty when only the diff found it). */
  required: string[];
}

/** What DirtyLogAudit.check() found. */
export interface DirtyLogReport {
  /** Pages with changed bytes outside driver-written ranges since the snapshot. */
  changedPages: number;
  /** Pages that changed or were required, and are not marked in the log. */
  unlogged: UnloggedPage[];
  /** Non-zero bytes in the log's memfd outside its bitmap. */
  strayLogBytes: number;
  /** No unlogged page and no stray byte. */
  ok: boolean;
  /** One line per unlogged page, for a failure message. */
  summary: string;
}

/** Where a VirtioNetDriver's queues and buffers live, split by who writes them. */
export interface DriverLayout {
  /** The descriptor tables, avail rings, TX buffers and control buffers: written by the driver. */
  driverWritten: AuditRange[];
  /** The used rings and RX buffers: written by the device. */
  deviceWritten: AuditRange[];
}

/** A completion in a driver's used ring that the driver has not taken yet, with its buffer. */
export interface PendingUsed {
  /** Where it is: the used ring position (split, free-running u16) or ring position (packed, idx | wrap << 15). */
  idx: number;
  /** The head (split) or buffer id (packed). */
  head: number;
  /** Bytes the device says it wrote. */
  len: number;
  /** The driver's buffer slot for head, and its guest physical address (-1 when the head is not the driver's). */
  slot: number;
  addr: number;
}

/**
 * The completions the device published in `ring` and the driver has not taken: call it before
 * drv.receive() takes them, to learn which RX buffers the device wrote and how much.
 */
export function usedNotTaken(ring: DriverRing): PendingUsed[] {
  return ring.q.pendingUsed().map(({ pos, id, len }) => {
    const slot = ring.q.isOutstanding(id) ? ring.slotOf[id]! : -1;
    return { idx: pos, head: id, len, slot, addr: slot >= 0 ? ring.slots[slot]! : -1 };
  });
}

/**
 * Shadow auditor of a dirty log: snapshot guest RAM, let the back-end work, then check() that every
 * page whose bytes changed (outside what the driver itself writes) is marked in the log.
 *
 *   audit.begin();           // log cleared, RAM snapshotted: logging must be on from here
 *   … traffic, then wait until it is quiet (a write is marked just after it lands) …
 *   const r = audit.check(); // r.unlogged lists each page, and what lives there
 */
export class DirtyLogAudit {
  readonly ram: GuestRam;
  /** The logs a mark may be in: the current one, plus those it replaced since begin(). */
  private logs: DirtyLog[];
  private readonly excluded: AuditRange[] = [];
  private readonly labels: AuditRange[] = [];
  private readonly required: AuditRange[] = [];
  /** Pages sync() collected since the snapshot: they were marked, even if the log no longer says so. */
  private readonly synced = new Set<number>();
  private shadow: Uint8Array | null = null;

  /**
   * `driver`: take the driver-written ranges (excluded) and the device-written ones (labels) from a
   * VirtioNetDriver's layout. `exclude`: more ranges the test writes itself (e.g. indirect tables).
   */
  constructor(ram: GuestRam, log: DirtyLog, opts: { driver?: VirtioNetDriver; exclude?: readonly AuditRange[] } = {}) {
    if (ram.gpa % DIRTY_PAGE_SIZE !== 0) throw new RangeError(`guest RAM at 0x${ram.gpa.toString(16)} is not page-aligned`);
    this.ram = ram;
    this.logs = [log];
    if (opts.driver) {
      const l = DirtyLogAudit.layoutOf(opts.driver);
      for (const r of l.driverWritten) this.exclude(r);
      for (const r of l.deviceWritten) this.label(r);
    }
    for (const r of opts.exclude ?? []) this.exclude(r);
  }

  /** The current log (the last one given). */
  get log(): DirtyLog {
    return this.logs[this.logs.length - 1]!;
  }

  /**
   * A new log replaces the current one (a second SET_LOG_BASE, sent while the back-end may be
   * writing): until the next begin(), a mark in either counts, as QEMU syncs the old log before it
   * frees it. From begin() on, only the new one counts.
   */
  replaceLog(log: DirtyLog): void {
    this.logs.push(log);
  }

  /** The layout of a VirtioNetDriver's queues (virtio-net.ts lays them out), split by writer. */
  static layoutOf(drv: VirtioNetDriver): DriverLayout {
    const driverWritten: AuditRange[] = [];
    const deviceWritten: AuditRange[] = [];
    const rings = (kind: 'RX' | 'TX' | 'control', list: readonly DriverRing[], slotLen: (r: DriverRing) => number, deviceSlots: boolean) => {
      for (const r of list) {
        const q = `queue ${r.index}`;
        // A packed descriptor ring has both writers: it counts as the driver's, so the diff cannot see
        // the device's used descriptors there (require() them to check they are logged).
        for (const a of r.q.areas()) (a.writer === 'device' ? deviceWritten : driverWritten).push({ gpa: a.gpa, len: a.len, what: `${a.what} of ${q}` });
        const len = slotLen(r);
        r.slots.forEach((gpa, k) => (deviceSlots ? deviceWritten : driverWritten).push({ gpa, len, what: `${kind} buffer ${k} of ${q}` }));
      }
    };
    rings('RX', drv.rx, () => drv.rxBufferSize, true);
    // TX slots are laid out back to back (virtio-net.ts TX_SLOT); the stride is their size.
    rings('TX', drv.tx, (r) => (r.slots.length > 1 ? r.slots[1]! - r.slots[0]! : TX_SLOT_FALLBACK), false);
    // The control queue's buffers hold the command (driver) and the ack byte, which the driver presets:
    // all of it counts as the driver's (QEMU keeps the control queue under vhost-user anyway).
    if (drv.ctrlRing) rings('control', [drv.ctrlRing], (r) => (r.slots.length > 1 ? r.slots[1]! - r.slots[0]! : 1024), false);
    return { driverWritten, deviceWritten };
  }

  /** Bytes the driver (or the test) writes: their changes are not the back-end's and are ignored. */
  exclude(r: AuditRange): void {
    this.excluded.push(r);
  }

  /** Names a range for reports (what lives there); changes to it are checked as usual. */
  label(r: AuditRange): void {
    this.labels.push(r);
  }

  /** A range the back-end wrote and must have marked, changed or not (reset by snapshot()). */
  require(gpa: number, len: number, what: string): void {
    if (len > 0) this.required.push({ gpa, len, what });
  }

  /**
   * Clears the log, then snapshots RAM: every write the back-end makes from now on must be marked.
   * The order matters: a mark that lands between the two belongs to bytes the snapshot already holds.
   */
  begin(): void {
    this.logs = [this.log];
    this.log.clear();
    this.snapshot();
  }

  /** Copies guest RAM as it is now, forgets require()d ranges and synced pages; check() compares against it. */
  snapshot(): void {
    this.shadow = this.ram.u8.slice();
    this.required.length = 0;
    this.synced.clear();
  }

  /**
   * One round of a pre-copy migration, which may run while the back-end writes: collect() the log
   * (each word fetched and cleared atomically) and copy the collected pages into the snapshot, as
   * QEMU re-sends them. A back-end that marks a page before it writes it loses that write here: the
   * page is copied early and never marked again, and check() finds it. Returns the pages copied.
   */
  sync(): number {
    const pages = new Set<number>();
    for (const l of this.logs) for (const gpa of l.collect()) pages.add(gpa);
    const shadow = this.shadow;
    if (!shadow) throw new Error('DirtyLogAudit.sync() before snapshot()');
    for (const gpa of pages) {
      const from = gpa - this.ram.gpa;
      if (from < 0 || from >= this.ram.size) continue;
      shadow.set(this.ram.u8.subarray(from, Math.min(from + DIRTY_PAGE_SIZE, this.ram.size)), from);
      this.synced.add(gpa);
    }
    return pages.size;
  }

  /** What lives on the page at `gpa` (labels and excluded ranges that overlap it). */
  describe(pageGpa: number): string[] {
    const end = pageGpa + DIRTY_PAGE_SIZE;
    const names = [...this.labels, ...this.excluded].filter((r) => r.gpa < end && r.gpa + r.len > pageGpa).map((r) => r.what);
    return names.length ? names : ['unlabelled'];
  }

  /**
   * Compares RAM with the snapshot: pages with changed bytes outside excluded ranges must be marked
   * now (after a sync(), the snapshot holds what it copied, so a change since is a write marked too
   * early or not at all), and pages of require()d ranges must have been marked since the snapshot.
   * Call it when the back-end is quiet: a write in flight may not be marked yet.
   */
  check(): DirtyLogReport {
    const shadow = this.shadow;
    if (!shadow) throw new Error('DirtyLogAudit.check() before snapshot()');
    const now = this.ram.u8;
    const base = this.ram.gpa;
    const pages = Math.ceil(this.ram.size / DIRTY_PAGE_SIZE);
    const ex = disjoint(this.excluded, base, this.ram.size);
    const cur = new Int32Array(now.buffer, now.byteOffset, now.length >>> 2);
    const old = new Int32Array(shadow.buffer, shadow.byteOffset, shadow.length >>> 2);
    const unlogged = new Map<number, UnloggedPage>();
    let changedPages = 0;
    let e = 0;
    for (let p = 0; p < pages; p++) {
      const from = p * DIRTY_PAGE_SIZE;
      const to = Math.min(from + DIRTY_PAGE_SIZE, now.length);
      while (e < ex.length && ex[e]!.to <= from) e++;
      if (e < ex.length && ex[e]!.from <= from && ex[e]!.to >= to) continue; // all the driver's
      if (!differs(cur, old, now, shadow, from, to)) continue;
      // Count the changed bytes in the gaps between excluded ranges: those are not the driver's.
      let changed = 0;
      let i = from;
      for (let k = e; i < to; k++) {
        const r = ex[k];
        const gapEnd = r && r.from < to ? Math.max(i, r.from) : to;
        for (; i < gapEnd; i++) if (now[i] !== shadow[i]) changed++;
        if (!r || r.from >= to) break;
        i = Math.max(i, r.to);
      }
      if (changed === 0) continue;
      changedPages++;
      const gpa = base + from;
      if (!this.isLogged(gpa)) unlogged.set(gpa, { gpa, what: this.describe(gpa), changedBytes: changed, required: [] });
    }
    for (const r of this.required) {
      const first = Math.floor(r.gpa / DIRTY_PAGE_SIZE);
      const last = Math.floor((r.gpa + r.len - 1) / DIRTY_PAGE_SIZE);
      for (let p = first; p <= last; p++) {
        const gpa = p * DIRTY_PAGE_SIZE;
        if (this.isLogged(gpa) || this.synced.has(gpa)) continue;
        const u = unlogged.get(gpa) ?? { gpa, what: this.describe(gpa), changedBytes: 0, required: [] };
        if (!u.required.includes(r.what)) u.required.push(r.what);
        unlogged.set(gpa, u);
      }
    }
    const list = [...unlogged.values()].sort((a, b) => a.gpa - b.gpa);
    const strayLogBytes = this.logs.reduce((n, l) => n + l.strayBytes(), 0);
    const lines = list.map((u) =>
      `page 0x${u.gpa.toString(16)} (${u.what.join(', ')}): ${u.changedBytes} bytes changed${u.required.length ? `, written as ${u.required.join(', ')}` : ''}, not logged`);
    if (strayLogBytes) lines.push(`${strayLogBytes} bytes of the log's memfd outside its bitmap were written`);
    return { changedPages, unlogged: list, strayLogBytes, ok: list.length === 0 && strayLogBytes === 0, summary: lines.join('\n') };
  }

  private isLogged(gpa: number): boolean {
    for (const l of this.logs) if (l.isDirty(gpa)) return true;
    return false;
  }
}

/** Ranges as RAM offsets clipped to [0, size), merged into disjoint ones, ascending. */
function disjoint(ranges: readonly AuditRange[], base: number, size: number): Array<{ from: number; to: number }> {
  const sorted = ranges
    .map((r) => ({ from: Math.max(0, r.gpa - base), to: Math.min(size, r.gpa + r.len - base) }))
    .filter((r) => r.to > r.from)
    .sort((a, b) => a.from - b.from);
  const out: Array<{ from: number; to: number }> = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.from <= last.to) last.to = Math.max(last.to, r.to);
    else out.push({ ...r });
  }
  return out;
}

/** Whether bytes [from, to) differ, a word at a time where the range is word-aligned. */
function differs(cur: Int32Array, old: Int32Array, now: Uint8Array, shadow: Uint8Array, from: number, to: number): boolean {
  const wFrom = from >>> 2;
  const wTo = to >>> 2;
  for (let w = wFrom; w < wTo; w++) if (cur[w] !== old[w]) return true;
  for (let i = wTo * 4; i < to; i++) if (now[i] !== shadow[i]) return true;
  return false;
}
