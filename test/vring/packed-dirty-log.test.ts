// PackedQueue's logging of what the device writes (live migration), as dirty-log.test.ts checks it for
// split rings: device and driver play over one packed ring with logging on, and after every device step
// each page whose bytes changed since the step before must be marked (a shadow copy of guest memory
// tells which changed). The device writes buffers (by used length), used descriptors into the
// descriptor ring, and its event suppression structure. With logging off the log stays untouched.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DirtyLog, LOG_PAGE_SIZE, dirtyLogSize, packedRingLayout, type DescriptorChain } from '../../vring/index.ts';
import { RAM_GPA, RAM_SIZE, makePackedRig } from './packed-rig.ts';

type Step =
  | { k: 'add'; writes: number[] }
  | { k: 'pop'; n: number }
  | { k: 'complete'; pick: number; frac: number }
  | { k: 'flush' }
  | { k: 'getUsed' }
  | { k: 'notify'; on: boolean }
  | { k: 'log'; on: boolean };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ k: fc.constant('add' as const), writes: fc.array(fc.integer({ min: 1, max: 6000 }), { minLength: 1, maxLength: 3 }) }) },
  { weight: 4, arbitrary: fc.record({ k: fc.constant('pop' as const), n: fc.integer({ min: 1, max: 6 }) }) },
  { weight: 5, arbitrary: fc.record({ k: fc.constant('complete' as const), pick: fc.nat(), frac: fc.double({ min: 0, max: 1, noNaN: true }) }) },
  { weight: 3, arbitrary: fc.constant({ k: 'flush' as const }) },
  { weight: 3, arbitrary: fc.constant({ k: 'getUsed' as const }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('notify' as const), on: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('log' as const), on: fc.boolean() }) },
);

describe('PackedQueue with a dirty log', () => {
  it('every page the device changed is marked: buffers by used length, used descriptors and the device area, across laps', () => {
    fc.assert(
      fc.property(fc.constantFrom(3, 4, 8, 16), fc.boolean(), fc.array(stepArb, { minLength: 20, maxLength: 160 }), (size, eventIdx, steps) => {
        const r = makePackedRig({ size, eventIdx });
        const { d, q } = r;
        const ram = new Uint8Array(r.buf);
        const logBuf = new ArrayBuffer(dirtyLogSize(RAM_GPA + RAM_SIZE));
        const log = new DirtyLog(logBuf, 0, logBuf.byteLength);
        const free: number[] = [];
        for (let i = 0; i < 3 * size; i++) free.push(r.alloc(2 * 6000 + 16));
        const popped: DescriptorChain[] = [];
        const bufsOf = new Map<number, number>();
        let logging = true;
        q.setDirtyLog(log, r.layout.device);
        let shadow = ram.slice();
        let fill = 1;
        let marked = 0;

        // Used descriptors are staged by addUsed (id and len written) and logged when flush() hands
        // them over: until then the ring's pages are left out (and keep their shadow).
        const ringLo = r.layout.desc - RAM_GPA;
        const ringHi = r.layout.end - RAM_GPA;
        let staged = false;
        const check = (what: string): void => {
          for (let off = 0; off < RAM_SIZE; off += LOG_PAGE_SIZE) {
            if (staged && off + LOG_PAGE_SIZE > ringLo && off < ringHi) continue;
            const a = ram.subarray(off, off + LOG_PAGE_SIZE);
            const b = shadow.subarray(off, off + LOG_PAGE_SIZE);
            if (Buffer.compare(a, b) === 0) continue;
            if (logging) {
              expect(log.isDirty(RAM_GPA + off), `${what}: page 0x${(RAM_GPA + off).toString(16)} changed and is not marked`).toBe(true);
              marked++;
            }
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
              bufsOf.set(d.add([], bufs), at);
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
              if (popped.length === 0) break;
              const c = popped.splice(s.pick % popped.length, 1)[0]!; // any order
              const len = Math.floor(c.writableLen * s.frac);
              c.writeBytes(0, new Uint8Array(len).fill(fill++ & 0xff || 1), 0, len);
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
              if (u) free.push(bufsOf.get(u.head)!);
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
              q.setDirtyLog(s.on ? log : null, r.layout.device);
              if (!s.on) log.collect(); // what is marked from now on must come from nothing
              break;
          }
          if (!logging) expect(log.collect(), 'logging is off: nothing may be marked').toEqual([]);
        }
        expect(marked).toBeGreaterThanOrEqual(0);
      }),
      { numRuns: 100 },
    );
  });

  it('logs used descriptors at their place in the descriptor ring, the device area at the log address', () => {
    const r = makePackedRig({ size: 4, eventIdx: true });
    const logBuf = new ArrayBuffer(dirtyLogSize(RAM_GPA + RAM_SIZE));
    const log = new DirtyLog(logBuf, 0, logBuf.byteLength);
    const buf = r.alloc(3 * 4096) + 4096; // a page of its own
    r.d.add([], [{ addr: buf, len: 100 }]);
    r.d.publish();
    const logAt = RAM_GPA + RAM_SIZE - LOG_PAGE_SIZE; // a log address elsewhere: the device area is logged there
    r.q.setDirtyLog(log, logAt);
    const c = r.q.pop()!; // EVENT_IDX: writes off_wrap
    expect(log.collect()).toEqual([logAt]);
    r.q.addUsed(c.head, 10);
    expect(log.collect()).toEqual([Math.floor(buf / LOG_PAGE_SIZE) * LOG_PAGE_SIZE]);
    r.q.flush();
    expect(log.collect()).toEqual([Math.floor(r.layout.desc / LOG_PAGE_SIZE) * LOG_PAGE_SIZE]);
    // Without a log address only buffers are logged.
    r.q.setDirtyLog(log, null);
    r.d.getUsed();
    r.d.add([], [{ addr: buf, len: 100 }]);
    r.d.publish();
    r.q.addUsed(r.q.pop()!.head, 1);
    r.q.flush();
    r.q.disableNotification();
    expect(log.collect()).toEqual([Math.floor(buf / LOG_PAGE_SIZE) * LOG_PAGE_SIZE]);
    expect(packedRingLayout(4, r.layout.desc).device).toBe(r.layout.device);
  });
});
