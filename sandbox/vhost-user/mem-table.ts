/**
 * The connection's memory table: the regions a front-end described with SET_MEM_TABLE or
 * ADD/REM_MEM_REG, each with the fd it sent. It validates every rule of DESIGN.md's list (count
 * limited, non-zero size, no overflow of gpa/uaddr/mmap_offset + size, no overlap in guest physical or
 * front-end virtual addresses) before anything is mapped, then hands the whole table to the device
 * (setMemory maps each new region's fd MAP_SHARED and releases the mappings that went). A region
 * ADD/REM_MEM_REG leave alone keeps its mapping (`keep`), at the address postcopy may have given out.
 *
 * Fd ownership: the table keeps one fd per region (the device matches a kept region by it, so the
 * fds must stay open); a replaced or removed region's fd is closed at once; close() closes them all.
 * Spec: vhost-user.rst, "Memory access", SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG.
 */
import type { MemoryRegionSpec } from '../../device/net.ts';
import { VhostUserError, VU } from './errors.ts';
import type { WireMemRegion } from './messages.ts';
import * as native from '../../native/index.ts';

/** A validated region: numbers are exact (< 2^53). */
export interface MemRegion {
  gpa: number;
  size: number;
  uaddr: number;
  mmapOffset: number;
  fd: number;
  /**
   * How many ADD_MEM_REG messages named this exact region. QEMU's multiqueue net has one vhost device
   * per queue pair on the same connection, and each adds (and later removes) the same regions.
   */
  refs: number;
}

/** What the table needs from the device. */
export interface MemoryTarget {
  setMemory(specs: MemoryRegionSpec[]): Promise<void>;
}

const LIMIT = 2n ** 53n;
const PAGE = 4096n;

/** Checks one region's own rules and converts it; does not look at the others. */
export function validateRegion(r: WireMemRegion, what: string): Omit<MemRegion, 'fd' | 'refs'> {
  if (r.size === 0n) throw new VhostUserError(VU.MEM_ZERO_SIZE, `${what}: size is 0`);
  for (const [name, base] of [['guest address', r.gpa], ['user address', r.uaddr], ['mmap offset', r.mmapOffset]] as const) {
    if (base + r.size > LIMIT) {
      throw new VhostUserError(VU.MEM_OVERFLOW, `${what}: ${name} 0x${base.toString(16)} + size 0x${r.size.toString(16)} overflows (lgnet addresses up to 2^53)`);
    }
  }
  if (r.mmapOffset % PAGE !== 0n) {
    throw new VhostUserError(VU.MEM_UNALIGNED, `${what}: mmap offset 0x${r.mmapOffset.toString(16)} is not page-aligned`);
  }
  return { gpa: Number(r.gpa), size: Number(r.size), uaddr: Number(r.uaddr), mmapOffset: Number(r.mmapOffset) };
}

/** Throws VU_MEM_OVERLAP when two regions share a guest physical or a user address. */
export function checkOverlaps(regions: ReadonlyArray<Omit<MemRegion, 'fd' | 'refs'>>): void {
  for (let i = 0; i < regions.length; i++) {
    for (let j = i + 1; j < regions.length; j++) {
      const a = regions[i]!;
      const b = regions[j]!;
      if (a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size) {
        throw new VhostUserError(VU.MEM_OVERLAP, `regions ${i} and ${j} overlap in guest physical addresses (0x${a.gpa.toString(16)}+0x${a.size.toString(16)}, 0x${b.gpa.toString(16)}+0x${b.size.toString(16)})`);
      }
      if (a.uaddr < b.uaddr + b.size && b.uaddr < a.uaddr + a.size) {
        throw new VhostUserError(VU.MEM_OVERLAP, `regions ${i} and ${j} overlap in user addresses (0x${a.uaddr.toString(16)}+0x${a.size.toString(16)}, 0x${b.uaddr.toString(16)}+0x${b.size.toString(16)})`);
      }
    }
  }
}

export class MemTable {
  private regions: MemRegion[] = [];
  /** True once a table was installed on this connection (rings may start). */
  installed = false;

  private readonly target: MemoryTarget;
  readonly maxSlots: number;

  constructor(target: MemoryTarget, maxSlots: number) {
    this.target = target;
    this.maxSlots = maxSlots;
  }

  get count(): number {
    return this.regions.length;
  }

  /** A copy of the current regions (fds included; do not close them). */
  list(): MemRegion[] {
    return this.regions.map((r) => ({ ...r }));
  }

  /**
   * SET_MEM_TABLE: replaces the whole table. `fds` (one per region, in order) become the table's on
   * success; on failure the caller still owns them.
   */
  async replace(wire: WireMemRegion[], fds: number[]): Promise<void> {
    const next = wire.map((r, i) => ({ ...validateRegion(r, `region ${i}`), fd: fds[i]!, refs: 1 }));
    checkOverlaps(next);
    await this.install(next);
    const old = this.regions;
    this.regions = next;
    for (const r of old) native.closeQuietly(r.fd);
  }

  /**
   * ADD_MEM_REG: one more region; returns true when `fd` became the table's. The same region added
   * again (same guest address, size, user address and offset) only counts one more reference, and the
   * caller closes `fd`.
   */
  async add(wire: WireMemRegion, fd: number): Promise<boolean> {
    const v = validateRegion(wire, 'added region');
    const same = this.regions.find((r) => r.gpa === v.gpa && r.size === v.size && r.uaddr === v.uaddr && r.mmapOffset === v.mmapOffset);
    if (same) {
      same.refs++;
      return false;
    }
    if (this.regions.length >= this.maxSlots) {
      throw new VhostUserError(VU.MEM_TOO_MANY_REGIONS, `the table already holds ${this.regions.length} regions, the most this back-end offers (GET_MAX_MEM_SLOTS)`);
    }
    const r = { ...v, fd, refs: 1 };
    const next = [...this.regions, r];
    checkOverlaps(next);
    await this.install(next);
    this.regions = next;
    return true;
  }

  /** REM_MEM_REG: the region with this gpa, uaddr and size (mmap_offset is ignored, as the spec says). */
  async remove(wire: WireMemRegion): Promise<void> {
    const i = this.regions.findIndex((r) => BigInt(r.gpa) === wire.gpa && BigInt(r.uaddr) === wire.uaddr && BigInt(r.size) === wire.size);
    if (i < 0) {
      throw new VhostUserError(VU.MEM_NOT_FOUND, `no region at guest address 0x${wire.gpa.toString(16)} (user 0x${wire.uaddr.toString(16)}, size 0x${wire.size.toString(16)})`);
    }
    const found = this.regions[i]!;
    if (found.refs > 1) {
      found.refs--;
      return;
    }
    const next = this.regions.filter((_, j) => j !== i);
    if (next.length > 0) await this.install(next);
    else this.installed = false;
    this.regions = next;
    native.closeQuietly(found.fd);
  }

  private async install(regions: MemRegion[]): Promise<void> {
    try {
      // A region already installed keeps its mapping (and its address, which postcopy gave out).
      await this.target.setMemory(regions.map((r) => ({ gpa: r.gpa, size: r.size, fd: r.fd, mmapOffset: r.mmapOffset, uaddr: r.uaddr, keep: this.regions.includes(r) })));
    } catch (e) {
      if (e instanceof VhostUserError) throw e;
      throw new VhostUserError(VU.MEM_MAP_FAILED, `the device could not map the memory table: ${(e as Error).message}`, { cause: e });
    }
    this.installed = true;
  }

  /** Forgets every region and closes their fds (the device keeps its mappings until the next setMemory). */
  close(): void {
    for (const r of this.regions) native.closeQuietly(r.fd);
    this.regions = [];
    this.installed = false;
  }
}
