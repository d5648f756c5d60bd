/**
 * The switch's forwarding against a model, on its ports opened directly (one thread, real shared
 * memory): fast-check draws bursts of frames from random ports, between a few MACs, broadcast among
 * them, and after each burst every port's ring must hold exactly what a learning switch delivers.
 * The model: a frame's unicast source is learned on its port (a MAC moves when it speaks elsewhere);
 * a broadcast, multicast or unlearned destination floods to every other port; a destination learned
 * on the sending port is dropped there (counted as filtered); otherwise it goes to its port alone.
 */
import fc from 'fast-check';
import { afterEach, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { IovecTable, MappingViews } from '../../native/iovec.ts';
import { decode, mask } from '../../device/features.ts';
import { createCounters, M } from '../../device/metrics.ts';
import { SwitchBackend, openPorts, type SwitchPortSpec } from '../../device/switch-backend.ts';

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

const PORTS = 3;
const MACS = [0x10, 0x20, 0x30, 0x40, 0x50].map((k) => [0x02, 0, 0, 0, 0, k]);
const BROADCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
const MULTICAST = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];
const HDR = 12;
const LEN = 60;

type Frame = { src: number; dst: number }; // dst: an index into MACS, or -1 broadcast, -2 multicast
type Burst = { port: number; frames: Frame[] };

const burst: fc.Arbitrary<Burst> = fc.record({
  port: fc.integer({ min: 0, max: PORTS - 1 }),
  frames: fc.array(fc.record({ src: fc.integer({ min: 0, max: MACS.length - 1 }), dst: fc.integer({ min: -2, max: MACS.length - 1 }) }), { minLength: 1, maxLength: 6 }),
});

it('every burst is delivered as a learning switch delivers it: learned, flooded, moved, or dropped at its own port', () => {
  fc.assert(
    fc.property(fc.array(burst, { minLength: 1, maxLength: 40 }), (bursts) => {
      const sw = new SwitchBackend({ ports: PORTS, slots: 64 });
      for (const p of sw.ports) p.configure(decode(mask('VERSION_1')));
      const ctx = () => ({ counters: createCounters(), frameFilter: undefined, mappings: new MappingViews(native.mappingBuffer) });
      const ports = sw.ports.map((p) => ({ ctx: ctx(), spec: p.port(0) as SwitchPortSpec })).map((x) => ({ ...openPorts(x.spec, x.ctx), c: x.ctx.counters }));
      const mapping = native.mmapAnonymous(1 << 16);
      const ram = new Uint8Array(native.mappingBuffer(mapping));
      try {
        const learned = new Map<number, number>();
        let tag = 0;
        let filtered = 0;
        for (const b of bursts) {
          const want: number[][] = Array.from({ length: PORTS }, () => []);
          const t = new IovecTable(8, 8);
          for (const [k, f] of b.frames.entries()) {
            const at = k * 128;
            ram.fill(0, at, at + HDR + LEN);
            ram.set(f.dst === -1 ? BROADCAST : f.dst === -2 ? MULTICAST : MACS[f.dst]!, at + HDR);
            ram.set(MACS[f.src]!, at + HDR + 6);
            ram.set([0x88, 0xb5, tag & 0xff, tag >> 8], at + HDR + 12);
            t.push(mapping, at, HDR + LEN);
            t.endFrame();
            // The model, frame by frame: learn the source, then forward.
            learned.set(f.src, b.port);
            const to = f.dst < 0 ? -1 : learned.get(f.dst) ?? -1;
            if (to === b.port) filtered++;
            else for (let p = 0; p < PORTS; p++) if (p !== b.port && (to < 0 || to === p)) want[p]!.push(tag);
            tag++;
          }
          expect(ports[b.port]!.tx.send(t, 0)).toBe(b.frames.length);
          for (let p = 0; p < PORTS; p++) {
            const got: number[] = [];
            const rx = new IovecTable(16, 16);
            for (let k = 0; k < 16; k++) {
              rx.push(mapping, 8192 + k * 256, 256);
              rx.endFrame();
            }
            const n = ports[p]!.rx.recv(rx, 16);
            for (let k = 0; k < n; k++) {
              const at = 8192 + k * 256 + HDR + 14;
              got.push(ram[at]! | (ram[at + 1]! << 8));
            }
            expect(got, `port ${p} after burst ${tag}`).toEqual(want[p]);
          }
        }
        expect(ports.reduce((s, p) => s + p.c[M.txDropFiltered]!, 0)).toBe(filtered);
        expect(ports.reduce((s, p) => s + p.c[M.txDropBackend]!, 0)).toBe(0);
      } finally {
        native.munmap(mapping);
        for (const p of sw.ports) p.close();
      }
    }),
    { numRuns: 150 },
  );
});
