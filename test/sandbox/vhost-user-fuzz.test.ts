/**
 * Random front-ends against the vhost-user server (fast-check): sequences of messages with real
 * request numbers, payloads of the right size with random contents (and sometimes of a random size),
 * random flags now and then, and random fds (memfds, eventfds) attached. Whatever a sequence does —
 * map random regions, start rings at random addresses, break queues — the process keeps serving:
 * the next well-behaved front-end negotiates, reads the config and gets traffic through, and once
 * every connection is gone no fd and no guest mapping is left behind.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import * as native from '../../native/index.ts';
import { FLAGS, REQ } from '../../sandbox/vhost-user/messages.ts';
import { VhostUserFrontend } from '../driver/vhost-user-frontend.ts';
import { destroyAllNetns, netnsPrerequisites } from '../helpers/netns.ts';
import { readFileSync } from 'node:fs';

import { ip4, mac, udpFrame } from '../driver/frames.ts';
import { createVuBed, expectedPayload, fdCount, udpSink, until, type VuBed } from './vhost-user-helpers.ts';

/** Mappings of memfds the fuzzer sent or the server made for it (inflight buffers), in this process. */
function fuzzMappings(): string[] {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => /memfd:lgnet-(fuzz|inflight)/.test(l));
}

const pre = netnsPrerequisites();
const V = FLAGS.VERSION;

/** Payload sizes a request takes when well formed (random contents fill them). */
const SIZES: Partial<Record<number, number[]>> = {
  [REQ.SET_FEATURES]: [8], [REQ.SET_PROTOCOL_FEATURES]: [8], [REQ.SET_VRING_NUM]: [8], [REQ.SET_VRING_BASE]: [8],
  [REQ.GET_VRING_BASE]: [8], [REQ.SET_VRING_ENABLE]: [8], [REQ.SET_VRING_ADDR]: [40], [REQ.SET_VRING_KICK]: [8],
  [REQ.SET_VRING_CALL]: [8], [REQ.SET_VRING_ERR]: [8], [REQ.SET_MEM_TABLE]: [8, 40, 72], [REQ.ADD_MEM_REG]: [40],
  [REQ.REM_MEM_REG]: [40], [REQ.GET_CONFIG]: [12 + 6, 12 + 12], [REQ.SET_CONFIG]: [12 + 6], [REQ.SEND_RARP]: [8],
  [REQ.NET_SET_MTU]: [8], [REQ.SET_STATUS]: [8], [REQ.GET_INFLIGHT_FD]: [24], [REQ.SET_INFLIGHT_FD]: [24],
};
const REQUESTS = Object.values(REQ);
/** The messages that set a ring up and start it: favoured, so that rings do start on random layouts. */
const RING_REQUESTS = [REQ.SET_VRING_NUM, REQ.SET_VRING_ADDR, REQ.SET_VRING_BASE, REQ.SET_VRING_KICK, REQ.SET_VRING_CALL, REQ.SET_VRING_ENABLE, REQ.GET_VRING_BASE];

interface FuzzMessage { request: number; flags: number; payload: Uint8Array; fds: Array<'memfd' | 'eventfd'> }

/** Requests that carry fds, and how many a well-formed one has. */
function fdsFor(request: number, payload: Uint8Array): number {
  switch (request) {
    case REQ.SET_MEM_TABLE: return payload.length >= 8 ? Math.min(8, payload[0]!) : 0;
    case REQ.ADD_MEM_REG: case REQ.SET_INFLIGHT_FD: return 1;
    case REQ.SET_VRING_KICK: case REQ.SET_VRING_CALL: case REQ.SET_VRING_ERR: return payload.length >= 8 && payload[1]! & 1 ? 0 : 1;
    default: return 0;
  }
}

/** Guest RAM the handshake installs; ring addresses in random messages often point into it. */
const RAM_UADDR = 0x7f00_0000_0000;
const RAM_SIZE = 1 << 20;

const message: fc.Arbitrary<FuzzMessage> = fc
  .record({
    request: fc.oneof(
      { weight: 10, arbitrary: fc.constantFrom(...RING_REQUESTS) },
      { weight: 6, arbitrary: fc.constantFrom(...(Object.keys(SIZES).map(Number))) },
      { weight: 3, arbitrary: fc.constantFrom(...REQUESTS) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 60 }) },
    ),
    flagsRandom: fc.integer({ min: 0, max: 39 }),
    flags: fc.integer({ min: 0, max: 0xff }),
    sizeChoice: fc.integer({ min: 0, max: 19 }),
    randomSize: fc.integer({ min: 0, max: 300 }),
    bytes: fc.uint8Array({ minLength: 300, maxLength: 300 }),
    small: fc.integer({ min: 0, max: 2 }),
    inRam: fc.array(fc.integer({ min: 0, max: RAM_SIZE - 1 }), { minLength: 3, maxLength: 3 }),
    fdKinds: fc.array(fc.constantFrom<'memfd' | 'eventfd'>('memfd', 'eventfd', 'eventfd'), { minLength: 8, maxLength: 8 }),
    fdsRandom: fc.integer({ min: 0, max: 9 }),
  })
  .map((r) => {
    const sizes = SIZES[r.request] ?? [0];
    const size = r.sizeChoice === 0 ? r.randomSize : sizes[r.sizeChoice % sizes.length]!;
    const payload = r.bytes.slice(0, size);
    const dv = new DataView(payload.buffer);
    // Small numbers where the server indexes with them (vring index, region count), and ring
    // addresses inside the installed RAM, so that deep paths run and not only the range checks.
    if (payload.length >= 4 && r.small) dv.setUint32(0, r.small - 1, true);
    if (r.request === REQ.SET_VRING_ADDR && payload.length === 40 && r.small) {
      r.inRam.forEach((o, i) => dv.setBigUint64(8 + 8 * i, BigInt(RAM_UADDR + (o & ~0xf)), true));
    }
    if (r.request === REQ.SET_VRING_NUM && payload.length === 8 && r.small) dv.setUint32(4, 1 << (r.small * 3 + 2), true);
    const n = r.fdsRandom === 0 ? r.small : fdsFor(r.request, payload);
    return { request: r.request, flags: r.flagsRandom === 0 ? r.flags : V, payload, fds: r.fdKinds.slice(0, n) };
  });

/** How a sequence starts: 0 bare, 1 negotiated with memory, 2 also with both rings running. */
const start = fc.record({
  mode: fc.integer({ min: 0, max: 2 }),
  seed: fc.integer({ min: 1, max: 0x7fffffff }),
  size: fc.constantFrom(16, 64, 256),
  rings: fc.array(fc.array(fc.integer({ min: 0, max: RAM_SIZE - 8192 }), { minLength: 3, maxLength: 3 }), { minLength: 2, maxLength: 2 }),
});

/** Fills `a` with xorshift32 output from `seed` (reproducible with the property's seed). */
function fillRandom(a: Uint32Array, seed: number): void {
  let x = seed | 1;
  for (let i = 0; i < a.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    a[i] = x >>> 0;
  }
}

describe.skipIf(!pre.ok)('vhost-user server: random front-ends', () => {
  let bed: VuBed;
  let ram = -1;
  let ramMapping = -1;
  let ramBytes = new Uint32Array(0);
  let kick = -1;
  beforeAll(async () => {
    bed = await createVuBed();
    ram = native.memfdCreate('lgnet-fuzz-ram', RAM_SIZE);
    ramMapping = native.mmap(ram, 0, RAM_SIZE);
    ramBytes = new Uint32Array(native.mappingBuffer(ramMapping));
    kick = native.eventfdCreate({ nonblocking: true });
  });
  afterAll(async () => {
    if (kick >= 0) native.close(kick);
    if (ramMapping >= 0) native.munmap(ramMapping);
    if (ram >= 0) native.close(ram);
    await bed?.close();
    destroyAllNetns();
  });

  it('300 random message sequences on rings over random bytes: the process serves on, and leaks no fd and no mapping', async () => {
    // Settle what the bed itself holds before counting.
    const warm = await bed.guest();
    warm.close();
    expect(await until(() => bed.server.connection === null)).toBe(true);
    const fds0 = fdCount();
    const maps0 = fuzzMappings().length;
    let sequences = 0;
    await fc.assert(
      fc.asyncProperty(start, fc.array(message, { minLength: 1, maxLength: 24 }), async (st, msgs) => {
        sequences++;
        // The guest's RAM holds random bytes: rings started on it meet garbage indices and descriptors.
        fillRandom(ramBytes, st.seed);
        const fe = await VhostUserFrontend.connect(bed.path);
        try {
          if (st.mode >= 1) {
            // A good start (features, protocol features, owner, memory) before the noise.
            await fe.negotiate();
            await fe.setMemTable([{ gpa: 0, size: RAM_SIZE, uaddr: RAM_UADDR, mmapOffset: 0, fd: ram }]);
          }
          if (st.mode === 2) {
            // Both rings started and enabled at random (aligned) places in that RAM.
            for (const [index, at] of st.rings.entries()) {
              await fe.setVringNum(index, st.size);
              await fe.setVringBase(index, 0);
              await fe.setVringAddr(index, { desc: RAM_UADDR + (at[0]! & ~0xf), avail: RAM_UADDR + (at[1]! & ~0x1), used: RAM_UADDR + (at[2]! & ~0x3) });
              await fe.setVringKick(index, kick);
              await fe.setVringCall(index, null);
              await fe.setVringEnable(index, true);
            }
            native.eventfdWrite(kick, 1);
          }
          for (const m of msgs) {
            const fds = m.fds.map((k) => (k === 'memfd' ? native.memfdCreate('lgnet-fuzz', 64 << 10) : native.eventfdCreate({ nonblocking: true })));
            try {
              fe.sendRaw(encode(m), fds);
            } catch {
              break; // the server dropped us: the rest cannot be sent
            } finally {
              for (const fd of fds) native.close(fd);
            }
          }
          await new Promise((r) => setTimeout(r, 2));
        } finally {
          fe.close();
        }
        expect(await until(() => bed.server.connection === null, 5000), 'the connection is torn down').toBe(true);
      }),
      { numRuns: Number(process.env.LGNET_FUZZ_RUNS ?? 300), interruptAfterTimeLimit: 90_000, markInterruptAsFailure: false },
    );
    expect(sequences).toBeGreaterThan(50);
    // The process still serves a real front-end, traffic included.
    const g = await bed.guest();
    try {
      expect((await g.fe.getConfig(0, 6)).length).toBe(6);
      const q = bed.dev.metrics().queues;
      expect(q.every((x) => x.running && x.broken === null)).toBe(true);
      const sink = await udpSink(bed.ns, bed.hostIp, 7600, 1, 5000);
      const tapMac = mac(bed.ns.exec('cat', '/sys/class/net/lgtap0/address').trim());
      const payload = expectedPayload(100, 7);
      expect(g.drv.send(udpFrame({ srcMac: mac(bed.guestMac), dstMac: tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp), srcPort: 40000, dstPort: 7600, payload }))).toBe(true);
      expect(await g.drv.drainTx(0, 5000)).toBe(0);
      expect((await sink.datagrams()).map((d) => d.hex)).toEqual([Buffer.from(payload).toString('hex')]);
    } finally {
      g.close();
    }
    expect(await until(() => bed.server.connection === null)).toBe(true);
    expect(await until(() => fdCount() <= fds0 && fuzzMappings().length <= maps0, 5000), `fds ${fdCount()} vs ${fds0}, mappings left: ${fuzzMappings().join('\n')}`).toBe(true);
    const q = bed.dev.metrics().queues;
    console.log(`[fuzz] ${sequences} sequences, ${bed.server.metrics.messages} messages, queues broken ${q.map((x) => x.queueBroken).join("/")}, errors by code: ${JSON.stringify(bed.server.metrics.errors)}`);
  }, 150_000);
});

function encode(m: FuzzMessage): Uint8Array {
  const b = new Uint8Array(12 + m.payload.length);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, m.request, true);
  dv.setUint32(4, m.flags, true);
  dv.setUint32(8, m.payload.length, true);
  b.set(m.payload, 12);
  return b;
}
