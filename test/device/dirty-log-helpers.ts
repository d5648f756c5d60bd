/**
 * What the dirty-log suites share: a driver ring's used index read from guest memory, a shadow of guest
 * RAM that tells which pages the device changed, and the check that the log holds each of them.
 */
import { expect } from 'vitest';
import { LOG_PAGE_SIZE, type DirtyLog } from '../../vring/index.ts';
import type { Bed } from './helpers.ts';

/** The used index of a driver ring, read from guest memory (no driver write). */
export function usedIdx(bed: Bed, ring: { setup: { used: number } }): number {
  return bed.ram.mem.readU16(ring.setup.used + 2);
}

export async function untilUsed(bed: Bed, ring: { setup: { used: number } }, from: number, n: number, timeoutMs = 5000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let got = 0;
  while ((got = (usedIdx(bed, ring) - from) & 0xffff) < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  return got;
}

/** A shadow of guest RAM and the pages changed since it was taken. */
export class Shadow {
  private readonly copy: Uint8Array;
  private readonly bed: Bed;
  constructor(bed: Bed) {
    this.bed = bed;
    this.copy = bed.ram.u8.slice();
  }
  changedPages(): number[] {
    const out: number[] = [];
    const ram = this.bed.ram.u8;
    for (let off = 0; off < ram.length; off += LOG_PAGE_SIZE) {
      if (Buffer.compare(ram.subarray(off, off + LOG_PAGE_SIZE), this.copy.subarray(off, off + LOG_PAGE_SIZE)) !== 0) out.push(this.bed.ram.gpa + off);
    }
    return out;
  }
}

/** Collect first, then snapshot: a mark made in between is kept, and a write after it is in the diff. */
export function begin(bed: Bed, log: DirtyLog): Shadow {
  log.collect();
  return new Shadow(bed);
}

export function expectLogged(changed: number[], marked: number[], what: string): void {
  const set = new Set(marked);
  const missing = changed.filter((p) => !set.has(p));
  expect(missing.map((p) => '0x' + p.toString(16)), `${what}: pages the device changed and did not log`).toEqual([]);
}
