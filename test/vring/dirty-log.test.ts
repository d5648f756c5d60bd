// The dirty log (vring/dirty-log.ts) and SplitQueue's logging of what the device writes. The property
// test plays device and driver over one ring with logging on: after every device step, each page whose
// bytes changed since the step before must be marked (a shadow copy of guest memory tells which
// changed), and with logging off the log stays untouched.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DirtyLog, LOG_PAGE_SIZE, dirtyLogSize, type DescriptorChain } from '../../vring/index.ts';
import { makeRig, RAM_GPA, RAM_SIZE } from './helpers.ts';

describe('DirtyLog', () => {
  it('marks one bit per 4 KiB page that a range touches, QEMU layout (bit p&7 of byte p>>3)', () => {
    const log = new DirtyLog(new ArrayBuffer(16), 0, 16);
    log.mark(0x1fff, 2); // pages 1 and 2
    log.mark(0xa000, 1); // page 10
    expect([...log.bytes.subarray(0, 2)]).toEqual([0b0000_0110, 0b0000_0100]);
    expect(log.isDirty(0x1000)).toBe(true);
    expect(log.isDirty(0x3000)).toBe(false);
    log.mark(0x5000, 0); // nothing written, nothing marked
    expect(log.isDirty(0x5000)).toBe(false);
  });

  it('counts pages beyond its end and never writes past its bytes', () => {
    const buf = new ArrayBuffer(8);
    const guard = new Uint8Array(buf, 4, 4);
    let heard = 0;
    const log = new DirtyLog(buf, 0, 4, (n) => (heard += n)); // 32 pages
    log.mark(31 * LOG_PAGE_SIZE, 3 * LOG_PAGE_SIZE); // pages 31, 32, 33
    expect(log.isDirty(31 * LOG_PAGE_SIZE)).toBe(true);
    expect(log.missed).toBe(2);
    expect(heard).toBe(2);
    expect([...guard]).toEqual([0, 0, 0, 0]);
  });

  it('collect() returns the marked pages in order and clears them', () => {
    const log = new DirtyLog(new ArrayBuffer(8), 0, 8);
    for (const p of [40, 3, 9]) log.mark(p * LOG_PAGE_SIZE + 100, 1);
    expect(log.collect()).toEqual([3, 9, 40].map((p) => p * LOG_PAGE_SIZE));
    expect(log.collect()).toEqual([]);
  });

  it('dirtyLogSize is whole u64 words covering every page', () => {
    expect(dirtyLogSize(0)).toBe(0);
    expect(dirtyLogSize(1)).toBe(8);
    expect(dirtyLogSize(64 * LOG_PAGE_SIZE)).toBe(8);
    expect(dirtyLogSize(64 * LOG_PAGE_SIZE + 1)).toBe(16);
    expect(dirtyLogSize(1 << 30)).toBe((1 << 30) / LOG_PAGE_SIZE / 8);
  });
});

type Step =
  | { k: 'add'; writes: number[] }
  | { k: 'pop'; n: number }
  | { k: 'complete'; frac: number }
  | { k: 'flush' }
  | { k: 'getUsed' }
  | { k: 'notify'; on: boolean }
  | { k: 'log'; on: boolean };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ k: fc.constant('add' as const), writes: fc.array(fc.integer({ min: 1, max: 6000 }), { minLength: 1, maxLength: 3 }) }) },
  { weight: 4, arbitrary: fc.record({ k: fc.constant('pop' as const), n: fc.integer({ min: 1, max: 6 }) }) },
  { weight: 5, arbitrary: fc.record({ k: fc.constant('complete' as const), frac: fc.double({ min: 0, max: 1, noNaN: true }) }) },
  { weight: 3, arbitrary: fc.constant({ k: 'flush' as const }) },
  { weight: 3, arbitrary: fc.constant({ k: 'getUsed' as const }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('notify' as const), on: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('log' as const), on: fc.boolean() }) },
);

describe('SplitQueue with a dirty log', () => {
  it('every page the device changed is marked: buffers by used length, used elements, used.idx, flags and avail_event, across wraps', () => {
    fc.assert(
      fc.property(fc.constantFrom(4, 8, 16), fc.boolean(), fc.array(stepArb, { minLength: 20, maxLength: 160 }), (size, eventIdx, steps) => {
        const r = makeRig({ size, eventIdx });
        const { d, q } = r;
        const ram = new Uint8Array(r.buf);
        const logBuf = new ArrayBuffer(dirtyLogSize(RAM_GPA + RAM_SIZE));
        const log = new DirtyLog(logBuf, 0, logBuf.byteLength);
        const free: number[] = [];
        for (let i = 0; i < 3 * size; i++) free.push(r.alloc(2 * 6000 + 16)); // buffers that straddle pages
        const popped: DescriptorChain[] = [];
        const bufsOf = new Map<number, number[]>();
        let logging = true;
        q.setDirtyLog(log, r.layout.used);
        let shadow = ram.slice();
        let fill = 1;
        let checkedPages = 0;

        // Pages changed since the shadow; each must be marked while logging is on. The driver's own
        // writes are taken into the shadow right after it makes them (they are not the device's).
        // Used elements are staged by addUsed and logged when flush() publishes them: until then the
        // used ring's pages are left out (and keep their shadow).
        const usedLo = r.layout.used - RAM_GPA;
        const usedHi = usedLo + 6 + 8 * size;
        let staged = false;
        const check = (what: string): void => {
          for (let off = 0; off < RAM_SIZE; off += LOG_PAGE_SIZE) {
            if (staged && off + LOG_PAGE_SIZE > usedLo && off < usedHi) continue;
            const a = ram.subarray(off, off + LOG_PAGE_SIZE);
            const b = shadow.subarray(off, off + LOG_PAGE_SIZE);
            if (Buffer.compare(a, b) === 0) continue;
            checkedPages++;
            if (logging) expect(log.isDirty(RAM_GPA + off), `${what}: page 0x${(RAM_GPA + off).toString(16)} changed and is not marked`).toBe(true);
            b.set(a);
          }
        };
        const driverDid = (): void => {
          shadow = ram.slice();
        };

        for (const s of steps) {
          switch (s.k) {
            case 'add': {
              if (d.freeCount < s.writes.length || free.length === 0) break;
              const at = free.pop()!;
              let off = 0;
              const bufs = s.writes.map((len) => {
                const b = { addr: at + off, len };
                off += len;
                return b;
              });
              const head = d.add([], bufs);
              bufsOf.set(head, [at]);
              d.publish();
              driverDid();
              break;
            }
            case 'pop':
              for (let i = 0; i < s.n; i++) {
                const c = q.pop();
                if (!c) break;
                popped.push(c);
              }
              check('pop');
              break;
            case 'complete': {
              const c = popped.shift();
              if (!c) break;
              const len = Math.floor(c.writableLen * s.frac);
              const bytes = new Uint8Array(len).fill(fill++ & 0xff || 1);
              c.writeBytes(0, bytes, 0, len);
              q.addUsed(c.head, len);
              staged = true;
              check('complete');
              break;
            }
            case 'flush':
              q.flush();
              staged = false;
              check('flush');
              break;
            case 'getUsed': {
              const u = d.getUsed();
              if (u) free.push(...(bufsOf.get(u.head) ?? []));
              driverDid();
              break;
            }
            case 'notify':
              if (s.on) q.enableNotification();
              else q.disableNotification();
              check('notification');
              break;
            case 'log':
              logging = s.on;
              q.setDirtyLog(s.on ? log : null, r.layout.used);
              if (!s.on) log.collect(); // what is marked from now on must come from nothing
              break;
          }
          if (!logging) expect(log.collect(), 'logging is off: nothing may be marked').toEqual([]);
        }
        expect(checkedPages).toBeGreaterThanOrEqual(0);
      }),
      { numRuns: 150 },
    );
  });

  it('without a used-log address, only buffers are logged; with logging off, the log is never touched', () => {
    const r = makeRig({ size: 8 });
    const logBuf = new ArrayBuffer(dirtyLogSize(RAM_GPA + RAM_SIZE));
    const log = new DirtyLog(logBuf, 0, logBuf.byteLength);
    const buf = r.alloc(8192);
    r.d.add([], [{ addr: buf, len: 100 }]);
    r.d.publish();
    r.q.setDirtyLog(log, null);
    const first = r.q.pop()!;
    r.q.addUsed(first.head, 10);
    r.q.flush();
    expect(log.collect()).toEqual([Math.floor(buf / LOG_PAGE_SIZE) * LOG_PAGE_SIZE]);
    r.q.setDirtyLog(null);
    r.d.getUsed();
    r.d.add([], [{ addr: buf, len: 100 }]);
    r.d.publish();
    const c = r.q.pop()!;
    r.q.addUsed(c.head, 100);
    r.q.flush();
    expect(new Uint8Array(logBuf).every((b) => b === 0)).toBe(true);
  });
});
