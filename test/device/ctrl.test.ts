/**
 * The control queue (embedded mode): rx mode and MAC table change what RX delivers; malformed
 * commands answer VIRTIO_NET_ERR and change nothing.
 */
import { expect, it } from 'vitest';
import { ACK, CTRL } from '../../device/ctrl.ts';
import { SplitRingBuilder } from '../../harness/rings.ts';
import * as native from '../../native/index.ts';
import { expectMetricDelta } from '../helpers/metrics.ts';
import { createBed, udpSend, type Bed } from './helpers.ts';

// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

const OTHER_MAC = '52:54:00:aa:bb:cc';

async function deliveredTo(b: Bed, port: number): Promise<number> {
  const before = b.dev.metrics().queues[0]!.frames;
  const s = udpSend(b, port, 64, 3, 5);
  await new Promise((r) => s.once('exit', r));
  const frames = await b.drv.waitRx(3, { timeoutMs: 700 });
  expect(b.dev.metrics().queues[0]!.frames - before).toBe(frames.length);
  return frames.length;
}

it('promisc off filters other unicast; the MAC table lets it in again', async () => {
  bed = await createBed({
    accept: ['VERSION_1', 'MAC', 'CTRL_VQ', 'CTRL_RX', 'CTRL_RX_EXTRA', 'CTRL_MAC_ADDR'],
    driver: { ctrl: { maxPairs: 1 } },
  });
  // The namespace now sends the guest's IP to another MAC.
  bed.ns.exec('ip', 'neigh', 'replace', bed.guestIp, 'lladdr', OTHER_MAC, 'dev', 'lgtap0');
  expect(await deliveredTo(bed, 6400)).toBe(3); // promiscuous by default
  expect(await bed.drv.ctrl(CTRL.RX, CTRL.RX_PROMISC, new Uint8Array([0]))).toBe(ACK.OK);
  expect(await deliveredTo(bed, 6400)).toBe(0);
  expect(bed.dev.metrics().queues[0]!.rxDropFiltered).toBe(3);
  // MAC table: one unicast entry (the other MAC), no multicast.
  const table = new Uint8Array(4 + 6 + 4);
  const dv = new DataView(table.buffer);
  dv.setUint32(0, 1, true);
  table.set(OTHER_MAC.split(':').map((h) => parseInt(h, 16)), 4);
  dv.setUint32(10, 0, true);
  expect(await bed.drv.ctrl(CTRL.MAC, CTRL.MAC_TABLE_SET, table)).toBe(ACK.OK);
  expect(await deliveredTo(bed, 6400)).toBe(3);
  // Back to the guest's own MAC: delivered with promisc off and an empty table.
  expect(await bed.drv.ctrl(CTRL.MAC, CTRL.MAC_TABLE_SET, new Uint8Array(8))).toBe(ACK.OK);
  bed.ns.exec('ip', 'neigh', 'replace', bed.guestIp, 'lladdr', '52:54:00:12:34:56', 'dev', 'lgtap0');
  expect(await deliveredTo(bed, 6400)).toBe(3);
});

it('malformed control commands answer ERR and change nothing', async () => {
  bed = await createBed({
    accept: ['VERSION_1', 'MAC', 'CTRL_VQ', 'CTRL_RX', 'CTRL_VLAN'],
    driver: { ctrl: { maxPairs: 1 } },
  });
  const ERR = ACK.ERR;
  expect(await bed.drv.ctrl(CTRL.RX, CTRL.RX_PROMISC, new Uint8Array([0, 0]))).toBe(ERR); // size
  expect(await bed.drv.ctrl(CTRL.RX, CTRL.RX_NOBCAST, new Uint8Array([1]))).toBe(ERR); // needs RX_EXTRA
  const huge = new Uint8Array(8);
  new DataView(huge.buffer).setUint32(0, 0xffff_ffff, true); // entries overflow
  expect(await bed.drv.ctrl(CTRL.MAC, CTRL.MAC_TABLE_SET, huge)).toBe(ERR);
  expect(await bed.drv.ctrl(CTRL.VLAN, CTRL.VLAN_ADD, new Uint8Array([0x00, 0x10]))).toBe(ERR); // vid 4096
  expect(await bed.drv.ctrl(CTRL.MQ, CTRL.MQ_VQ_PAIRS_SET, new Uint8Array([1, 0]))).toBe(ERR); // MQ not negotiated
  expect(await bed.drv.ctrl(99, 0, new Uint8Array(0))).toBe(ERR);
  expect(bed.dev.metrics().ctrl).toEqual({ commands: 6, errors: 6 });
  expect(await deliveredTo(bed, 6500)).toBe(3); // still promiscuous
});

it('a hostile control ring breaks the control queue: counted, logged once, NEEDS_RESET, data queues untouched', async () => {
  bed = await createBed({
    accept: ['VERSION_1', 'MAC', 'CTRL_VQ', 'CTRL_RX'],
    driver: { ctrl: { maxPairs: 1 } },
  });
  const logs: Array<{ level: string; msg: string; code?: string }> = [];
  bed.dev.on('log', (e: { level: string; msg: string; code?: string }) => logs.push(e));
  const ring = bed.drv.ctrlRing!;
  const ctrlIndex = bed.dev.ctrlIndex;
  const ctrlQueue = () => bed!.dev.metrics().queues[ctrlIndex]!;
  // avail.idx jumps past the ring size (the CVE-2020-10723 class), then the driver kicks.
  await expectMetricDelta(ctrlQueue, { queueBroken: 1 }, () => {
    SplitRingBuilder.over(bed!.ram.mem, ring.setup).jumpAvailIdx(ring.setup.size + 1);
    native.eventfdWrite(ring.setup.kickFd, 1);
  }, { until: { timeoutMs: 1000 } });
  const m = bed.dev.metrics();
  expect(m.queues[ctrlIndex]!.broken).toMatch(/^VRING_AVAIL_IDX_JUMP: /);
  expect(logs.filter((l) => l.msg === 'queue broken').map((l) => [l.level, l.code])).toEqual([['error', 'VRING_AVAIL_IDX_JUMP']]);
  expect(bed.dev.status & 0x40).toBe(0x40);
  expect(m.queues.filter((q) => q.role !== 'ctrl').map((q) => q.broken)).toEqual([null, null]);
  // A second kick changes nothing: broken is final until a reset.
  await expectMetricDelta(ctrlQueue, { queueBroken: 0 }, async () => {
    native.eventfdWrite(ring.setup.kickFd, 1);
    await new Promise((r) => setTimeout(r, 50));
  });
});
