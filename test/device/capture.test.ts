/**
 * pcap capture (device/capture.ts): frames of both queues land in a pcap file that tcpdump reads,
 * byte for byte as they crossed the device, TX as the guest sent them and RX as the guest got them,
 * with MRG_RXBUF frames spread over several buffers captured whole.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, afterEach, expect, it } from 'vitest';

import { closePcap, openPcap, PCAP_MAGIC } from '../../device/capture.ts';
import { ip4, udpFrame } from '../../harness/frames.ts';
import { destroyAllNetns } from '../../harness/netns.ts';
import { createBed, expectedPayload, udpSend, udpSink, type Bed } from './helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'lgnet-pcap-'));
afterAll(() => {
  destroyAllNetns();
  rmSync(dir, { recursive: true, force: true });
});
let bed: Bed | undefined;
let fd = -1;
afterEach(async () => {
  await bed?.close();
  bed = undefined;
  if (fd >= 0) closePcap(fd);
  fd = -1;
});

interface PcapRecord { sec: number; usec: number; incl: number; orig: number; data: Uint8Array }

/** Reads a classic pcap file: its header fields and records. */
function readPcap(path: string): { snaplen: number; linktype: number; records: PcapRecord[] } {
  const b = readFileSync(path);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  expect(dv.getUint32(0, true)).toBe(PCAP_MAGIC);
  expect([dv.getUint16(4, true), dv.getUint16(6, true)]).toEqual([2, 4]);
  const records: PcapRecord[] = [];
  let o = 24;
  while (o + 16 <= b.length) {
    const incl = dv.getUint32(o + 8, true);
    records.push({ sec: dv.getUint32(o, true), usec: dv.getUint32(o + 4, true), incl, orig: dv.getUint32(o + 12, true), data: b.subarray(o + 16, o + 16 + incl) });
    o += 16 + incl;
  }
  expect(o).toBe(b.length); // no torn record
  return { snaplen: dv.getUint32(16, true), linktype: dv.getUint32(20, true), records };
}

const udpPort = (f: Uint8Array, at: 34 | 36): number => (f[at]! << 8) | f[at + 1]!;
const isUdp = (f: Uint8Array): boolean => f.length >= 42 && f[12] === 8 && f[13] === 0 && f[23] === 17;

async function traffic(b: Bed, port: number, size: number): Promise<void> {
  const sink = await udpSink(b, port, 3, 5000);
  for (let i = 0; i < 3; i++) {
    const frame = udpFrame({ srcMac: b.guestMac, dstMac: b.tapMac, srcIp: ip4(b.guestIp), dstIp: ip4(b.hostIp), srcPort: 5002, dstPort: port, payload: expectedPayload(size, i) });
    expect(b.drv.send(frame)).toBe(true);
  }
  expect(await b.drv.drainTx(0, 5000)).toBe(0);
  expect((await sink.datagrams()).length).toBe(3);
  const sender = udpSend(b, port + 1, size, 3, 10);
  const rx = await b.drv.waitRx(3, { timeoutMs: 5000 });
  sender.kill();
  expect(rx.filter((f) => isUdp(f.frame) && udpPort(f.frame, 36) === port + 1).length).toBe(3);
}

it.each([
  ['without MRG_RXBUF', ['VERSION_1', 'MAC'] as const, 200],
  ['with MRG_RXBUF, 4000-byte frames over 2048-byte buffers', ['VERSION_1', 'MAC', 'MRG_RXBUF'] as const, 4000],
])('captures TX and RX frames whole, readable by tcpdump (%s)', async (_name, accept, size) => {
  const path = join(dir, `${accept.length}.pcap`);
  fd = openPcap(path);
  bed = await createBed({ accept: [...accept], mtu: 9000, device: { capture: { fd } } });
  await traffic(bed, 7400, size);
  const m = bed.dev.metrics().queues;
  await bed.close(); // workers gone: every burst is written
  bed = undefined;

  const { snaplen, linktype, records } = readPcap(path);
  expect([snaplen, linktype]).toEqual([65535, 1]);
  const udp = records.filter((r) => isUdp(r.data));
  const tx = udp.filter((r) => udpPort(r.data, 36) === 7400);
  const rx = udp.filter((r) => udpPort(r.data, 36) === 7401);
  expect(tx.length).toBe(3);
  expect(rx.length).toBe(3);
  for (const [i, r] of [...tx.entries(), ...rx.entries()]) {
    expect(r.incl).toBe(r.orig);
    expect(r.incl).toBe(42 + size);
    expect(Buffer.from(r.data.subarray(42)).equals(Buffer.from(expectedPayload(size, i)))).toBe(true);
  }
  // Every frame that crossed the device, and nothing else, was captured.
  expect(records.length).toBe(m[0]!.frames + m[1]!.frames);
  expect(m[0]!.captured + m[1]!.captured).toBe(records.length);
  expect(m[0]!.captureFailed + m[1]!.captureFailed).toBe(0);
  const now = Date.now() / 1000;
  for (const r of records) expect(Math.abs(r.sec + r.usec / 1e6 - now)).toBeLessThan(60);

  const dump = spawnSync('tcpdump', ['-r', path, '-nn', 'udp'], { encoding: 'utf8' });
  expect(dump.status, dump.stderr).toBe(0);
  const lines = dump.stdout.split('\n').filter(Boolean);
  expect(lines.filter((l) => l.includes('.7400: UDP, length')).length).toBe(3);
  expect(lines.filter((l) => l.includes('.7401: UDP, length')).length).toBe(3);
  expect(lines.every((l) => l.includes(`length ${size}`))).toBe(true);
}, 60_000);

it('a capture fd that cannot be written to is counted, and traffic is not disturbed', async () => {
  const path = join(dir, 'readonly.pcap');
  closePcap(openPcap(path));
  const { openSync } = await import('node:fs');
  fd = openSync(path, 'r'); // writes fail with EBADF
  bed = await createBed({ accept: ['VERSION_1', 'MAC'], device: { capture: { fd } } });
  await traffic(bed, 7410, 100);
  const q = bed.dev.metrics().queues;
  expect(q[1]!.captureFailed).toBeGreaterThanOrEqual(3);
  expect(q[1]!.frames).toBe(3);
  expect(q[1]!.broken).toBeNull();
}, 60_000);
