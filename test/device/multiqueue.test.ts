/**
 * Two queue pairs on a multiqueue tap, one worker per queue: traffic on both pairs.
 *
 * RX: the tap, not the device, picks the queue of a frame from the host, by a hash of its flow (seeded
 * at boot). So the test does not count on a handful of flows spreading: it probes flows one at a time
 * until it knows two on each queue, then checks that every datagram of those flows arrives on the pair
 * its flow first did. A device that served one pair only fails the probe (a datagram never arrives).
 */
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { expect, it } from 'vitest';

import { ACK, CTRL } from '../../device/ctrl.ts';
import { ip4, udpFrame } from '../../harness/frames.ts';
import { FLOWS, sprayFlows, sprayUdp } from '../helpers/flows.ts';
import { createBed, expectedPayload, udpSink, type Bed } from './helpers.ts';

const FLOWS_FIXTURE = fileURLToPath(new URL('./fixtures/udp-flows.mjs', import.meta.url));

// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

it('TX on both pairs reaches the namespace', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'MAC', 'MQ', 'RING_EVENT_IDX'], queuePairs: 2 });
  const sink = await udpSink(bed, 7300, 4, 5000);
  for (let seq = 0; seq < 4; seq++) {
    const frame = udpFrame({
      srcMac: bed.guestMac, dstMac: bed.tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp),
      srcPort: 5003, dstPort: 7300, payload: expectedPayload(80, seq),
    });
    expect(bed.drv.send(frame, { pair: seq & 1 })).toBe(true);
    expect(await bed.drv.drainTx(seq & 1)).toBe(0);
  }
  expect((await sink.datagrams()).length).toBe(4);
  const q = bed.dev.metrics().queues;
  expect(q[1]!.frames).toBe(2);
  expect(q[3]!.frames).toBe(2);
});

/** Destination port of the flows, and the source port of flow 0 (flow k sends from SRC_BASE + k). */
const DST_PORT = 6600;
const SRC_BASE = 41000;
/** Flows the probe may try. Each lands on a queue as by a coin toss: 64 all on one queue is 2^-63. */
const MAX_FLOWS = 64;
/** Flows kept per queue, and datagrams each then sends. */
const PER_QUEUE = 2;
const ROUNDS = 25;

interface Arrival { pair: number; flow: number; seq: number }

/** Flow and sequence number of one of udp-flows.mjs's datagrams (IPv4 without options, UDP to DST_PORT), else null. */
function parse(frame: Uint8Array): { flow: number; seq: number } | null {
  const dv = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  if (frame.length < 46 || dv.getUint16(12) !== 0x0800 || frame[14] !== 0x45 || frame[23] !== 17) return null;
  const src = dv.getUint16(34);
  if (dv.getUint16(36) !== DST_PORT || src < SRC_BASE || src >= SRC_BASE + MAX_FLOWS) return null;
  const flow = dv.getUint16(42);
  if (flow !== src - SRC_BASE) return null;
  return { flow, seq: dv.getUint16(44) };
}

it('RX: each flow arrives on the pair the tap hashes it to, every time, and both pairs get flows', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'MAC', 'MQ', 'RING_EVENT_IDX'], queuePairs: 2 });
  const b = bed;
  const sender: ChildProcess = b.ns.spawn(['node', FLOWS_FIXTURE, b.guestIp, String(DST_PORT), String(SRC_BASE), String(MAX_FLOWS)], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  sender.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  sender.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  sender.stdin!.on('error', (e) => (err += `stdin: ${e.message}`)); // the sender died: the waits below fail and say so
  const send = (flow: number, seq: number): void => void sender.stdin!.write(`${flow} ${seq}\n`);

  // Every frame either pair delivered, in order, and the ones that are not ours.
  const arrivals: Arrival[] = [];
  const others = [0, 0];
  const framesOn = [0, 0];
  const poll = (): void => {
    for (const pair of [0, 1]) {
      for (const f of b.drv.receive(pair)) {
        framesOn[pair]!++;
        const d = parse(f.frame);
        if (d) arrivals.push({ pair, ...d });
        else others[pair]!++;
      }
    }
  };
  /** Polls until `cond` holds or timeoutMs passes. */
  const until = async (cond: () => boolean, timeoutMs: number): Promise<boolean> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      poll();
      if (cond()) return true;
      if (Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  const arrived = (flow: number, seq: number): boolean => arrivals.some((a) => a.flow === flow && a.seq === seq);

  const deadline = Date.now() + 20_000;
  while (!out.includes('READY') && sender.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  expect(out, `udp-flows.mjs did not start: ${err}`).toContain('READY');

  // Probe: one datagram per flow, one flow at a time, until PER_QUEUE flows are known on each queue.
  const queueOf = new Map<number, number>();
  const onQueue: number[][] = [[], []];
  for (let flow = 0; flow < MAX_FLOWS && onQueue.some((q) => q.length < PER_QUEUE); flow++) {
    send(flow, 0);
    expect(await until(() => arrived(flow, 0), 5000), `flow ${flow}'s datagram arrived on neither pair (probe so far: ${JSON.stringify(arrivals)}; ${err})`).toBe(true);
    const pair = arrivals.find((a) => a.flow === flow)!.pair;
    queueOf.set(flow, pair);
    onQueue[pair]!.push(flow);
  }
  expect(onQueue.every((q) => q.length >= PER_QUEUE), `${queueOf.size} flows probed, [flow, pair]: ${JSON.stringify([...queueOf])}`).toBe(true);

  // The kept flows, interleaved: every datagram must come in on its flow's pair.
  const kept = [...onQueue[0]!.slice(0, PER_QUEUE), ...onQueue[1]!.slice(0, PER_QUEUE)];
  for (let seq = 1; seq <= ROUNDS; seq++) for (const flow of kept) send(flow, seq);
  const want = kept.length * ROUNDS;
  const later = (): Arrival[] => arrivals.filter((a) => a.seq > 0);
  expect(await until(() => later().length >= want, 15_000), `${later().length} of ${want} datagrams arrived; ${err}`).toBe(true);
  await until(() => false, 200); // anything extra (a duplicate) would show up now
  sender.stdin!.end();

  const expected = kept.flatMap((flow) => Array.from({ length: ROUNDS }, (_, i) => ({ pair: queueOf.get(flow)!, flow, seq: i + 1 })));
  const byFlowSeq = (a: Arrival, b: Arrival): number => a.flow - b.flow || a.seq - b.seq;
  expect(later().sort(byFlowSeq)).toEqual(expected.sort(byFlowSeq));
  // The probes each arrived exactly once too, and nothing else came in.
  expect(arrivals.filter((a) => a.seq === 0).length).toBe(queueOf.size);
  expect(others).toEqual([0, 0]);
  // The device's RX counters agree with what each pair delivered.
  const q = b.dev.metrics().queues;
  expect([q[0]!.frames, q[2]!.frames]).toEqual(framesOn);
  console.log(`[multiqueue] ${queueOf.size} flows probed to find ${PER_QUEUE} per pair; RX frames per pair ${framesOn.join('/')}`);
}, 60_000);

// Embedded, the device decides which pairs take the host's frames from what the driver negotiated:
// with MQ and a control queue, pair 0 alone until VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (virtio 1.2
// §5.1.6.5.5), then what it set. A flow the tap hashed to a pair the driver does not use would wait
// there for good.
it('RX with a control queue: pair 0 alone until MQ_VQ_PAIRS_SET, then both, then pair 0 again', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'MAC', 'MQ', 'CTRL_VQ', 'RING_EVENT_IDX'], queuePairs: 2, driver: { ctrl: { maxPairs: 2 } } });
  const b = bed;
  const pairs = (n: number): Uint8Array => new Uint8Array([n & 0xff, n >> 8]);
  expect(await sprayFlows(b.ns, b.guestIp, b.drv, 2)).toEqual([FLOWS, 0]);
  expect(await b.drv.ctrl(CTRL.MQ, CTRL.MQ_VQ_PAIRS_SET, pairs(2))).toBe(ACK.OK);
  const both = await sprayFlows(b.ns, b.guestIp, b.drv, 2);
  expect(both[0]! + both[1]!).toBe(FLOWS);
  expect(both[0], `${both}`).toBeGreaterThan(0);
  expect(both[1], `${both}`).toBeGreaterThan(0);
  expect(await b.drv.ctrl(CTRL.MQ, CTRL.MQ_VQ_PAIRS_SET, pairs(1))).toBe(ACK.OK);
  expect(await sprayFlows(b.ns, b.guestIp, b.drv, 2)).toEqual([FLOWS, 0]);
  expect(b.dev.queuePairsActive).toBe(1);
});

it('a pair taken out of use: the frames its tap queue held are read out and counted (rxDropDetached), not discarded unseen', async () => {
  // Small rings, and pair 1's never given back: its queue in the tap fills behind a full ring.
  bed = await createBed({ accept: ['VERSION_1', 'MAC', 'MQ', 'CTRL_VQ', 'RING_EVENT_IDX'], queuePairs: 2, driver: { ctrl: { maxPairs: 2 }, queueSize: 16 } });
  const b = bed;
  const pairs = (n: number): Uint8Array => new Uint8Array([n & 0xff, n >> 8]);
  expect(await b.drv.ctrl(CTRL.MQ, CTRL.MQ_VQ_PAIRS_SET, pairs(2))).toBe(ACK.OK);
  const PER_FLOW = 8;
  const TAG = 0xd7;
  const got = [0, 0];
  const ours = (f: Uint8Array): boolean => f.length >= 44 && f[23] === 17 && f[42] === TAG;
  const take0 = (): void => {
    for (const f of b.drv.receive(0)) if (ours(f.frame)) got[0]!++;
    b.drv.fillRx(0);
  };
  sprayUdp(b.ns, b.guestIp, { flows: FLOWS, perFlow: PER_FLOW, tag: TAG });
  // Pair 0 is served until nothing more comes for 300 ms; pair 1 is left alone.
  let last = -1;
  for (let quiet = 0; quiet < 30; quiet = got[0] === last ? quiet + 1 : 0) {
    last = got[0]!;
    take0();
    await new Promise((res) => setTimeout(res, 10));
  }
  const rxOf = (pair: number) => b.dev.metrics().queues[2 * pair]!;
  expect(rxOf(1).rxDropDetached).toBe(0);
  expect(await b.drv.ctrl(CTRL.MQ, CTRL.MQ_VQ_PAIRS_SET, pairs(1))).toBe(ACK.OK);
  const detached = rxOf(1).rxDropDetached;
  for (const f of b.drv.receive(1)) if (ours(f.frame)) got[1]!++;
  // What the worker of pair 1 read ahead of buffers (io_uring's stage) is counted when it stops.
  await b.dev.stop();
  const stopped = rxOf(1).rxDropStopped + rxOf(0).rxDropStopped;
  expect(got[1], 'pair 1 took frames until its ring was full').toBeGreaterThan(0);
  expect(detached, `${JSON.stringify({ got, stopped })}`).toBeGreaterThan(0);
  // Every datagram is somewhere: delivered on either pair, or counted as dropped.
  expect(got[0]! + got[1]! + detached + stopped).toBe(FLOWS * PER_FLOW);
});

