// scripts/bench/vring.ts — `npm run bench:vring`: device-side cost of the split-ring hot path.
//
// Per chain: popBurst(32) → locate() + read a 12-byte virtio_net_hdr → addUsed(); flush() once per
// burst. 1-, 2- and 4-descriptor chains (header in its own descriptor for 2 and 4: the header split
// that ANY_LAYOUT drivers use), 256-entry ring, the driver side refilling between bursts. Only the
// device side is timed (per burst); the refill is timed separately and reported for context.
// Prints a table and writes bench/results/vring.json. Target: < 100 ns per 2-descriptor chain.

import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DescriptorChain, DriverQueue, GuestMemory, SplitQueue, splitRingLayout, type GuestBuffer } from '../../vring/index.ts';

const SIZE = 256;
const BURST = 32;
const HDR = 12;

interface Result {
  descs: number;
  chains: number;
  nsPerChain: number;
  chainsPerSec: number;
  refillNsPerChain: number;
}

function bench(descs: number, chainsTarget: number): Result {
  const ram = new ArrayBuffer(8 << 20);
  const mem = new GuestMemory([{ gpa: 0x4000_0000, size: ram.byteLength, buffer: ram, mappingId: 0 }]);
  const L = splitRingLayout(SIZE, 0x4000_0000);
  const d = new DriverQueue(mem, { size: SIZE, desc: L.desc, avail: L.avail, used: L.used });
  d.init();
  const q = new SplitQueue({ size: SIZE, desc: L.desc, avail: L.avail, used: L.used });
  q.attach(mem);
  // One fixed set of buffers per ring slot, as a driver with pre-allocated packet buffers would have.
  const data = 0x4000_0000 + (1 << 20);
  const shapes: GuestBuffer[][] = [];
  for (let s = 0; s < SIZE; s++) {
    const base = data + s * 4096;
    let bufs: GuestBuffer[];
    if (descs === 1) bufs = [{ addr: base, len: HDR + 1500 }];
    else if (descs === 2) bufs = [{ addr: base, len: HDR }, { addr: base + 64, len: 1500 }];
    else bufs = [{ addr: base, len: HDR }, { addr: base + 64, len: 54 }, { addr: base + 128, len: 1000 }, { addr: base + 1200, len: 446 }];
    shapes.push(bufs);
    mem.writeU16(base + 10, 1); // num_buffers
  }
  const none: GuestBuffer[] = [];
  let next = 0;
  const refill = (): void => {
    while (d.popUsed() >= 0) { /* reclaim */ }
    while (d.freeCount >= descs) {
      d.add(shapes[next]!, none);
      next = (next + 1) % SIZE;
    }
    d.publish();
  };
  const chains: DescriptorChain[] = [];
  let sink = 0;
  const burst = (): number => {
    const n = q.popBurst(BURST, chains);
    for (let i = 0; i < n; i++) {
      const c = chains[i]!;
      if (c.locate(0, HDR)) sink += c.dv.getUint16(c.pos + 10, true) + c.u8[c.pos]!;
      q.addUsed(c.head, 0);
    }
    q.flush();
    return n;
  };
  // Warm up (JIT, chain objects for every head).
  for (let i = 0; i < 20000; i++) {
    refill();
    burst();
  }
  let devNs = 0;
  let refNs = 0;
  let done = 0;
  while (done < chainsTarget) {
    const r0 = process.hrtime.bigint();
    refill();
    const t0 = process.hrtime.bigint();
    done += burst();
    const t1 = process.hrtime.bigint();
    refNs += Number(t0 - r0);
    devNs += Number(t1 - t0);
  }
  if (sink === 42) console.log('');
  const nsPerChain = devNs / done;
  return { descs, chains: done, nsPerChain, chainsPerSec: 1e9 / nsPerChain, refillNsPerChain: refNs / done };
}

/** Runs the vring benchmark with `chains` chains per shape; writes `outDir`/vring.json (suite entry). */
export function benchVring(opts: { chains?: number; outDir?: string } = {}): Record<string, unknown> {
  const N = opts.chains ?? 3_000_000;
  const results = [1, 2, 4].map((k) => bench(k, N));
  console.log(`vring device hot path: popBurst(${BURST}) → locate+read ${HDR}-byte header → addUsed → flush per burst; ring ${SIZE}`);
  console.log('descs/chain   ns/chain   Mchains/s   (driver refill ns/chain)');
  for (const r of results) {
    console.log(`${String(r.descs).padStart(11)}   ${r.nsPerChain.toFixed(1).padStart(8)}   ${(r.chainsPerSec / 1e6).toFixed(2).padStart(9)}   (${r.refillNsPerChain.toFixed(1)})`);
  }
  const two = results.find((r) => r.descs === 2)!;
  console.log(`target < 100 ns per 2-descriptor chain: ${two.nsPerChain < 100 ? 'met' : 'NOT met'} (${two.nsPerChain.toFixed(1)} ns)`);
  const out = join(opts.outDir ?? join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'results'), 'vring.json');
  mkdirSync(dirname(out), { recursive: true });
  const data = { bench: 'vring', node: process.version, date: new Date().toISOString(), ringSize: SIZE, burst: BURST, headerBytes: HDR, results };
  writeFileSync(out, JSON.stringify(data, null, 2) + '\n');
  console.log(`wrote ${out}`);
  return data;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) benchVring({ chains: Number(process.argv[2] ?? 3_000_000) });
