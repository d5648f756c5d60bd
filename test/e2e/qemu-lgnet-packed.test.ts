/**
 * A real guest on lgnet with packed virtqueues (virtio-net-pci packed=on): the Linux driver negotiates
 * VIRTIO_F_RING_PACKED (bit 34, read from sysfs) and lgnet serves packed rings. Each run is a fresh
 * namespace, lgnet, blob server and QEMU (lib/run.ts).
 *
 *   packed=on with everything else on: ping, TCP both ways (iperf3), a 64 MiB blob host→guest and back
 *   packed=on with mrg_rxbuf, event_idx, indirect_desc off one at a time: ping and 8 MiB both ways
 *   packed=on with mq=on and 2 queue pairs, 2 vCPUs: traffic on both pairs
 *   packed=on with host_mtu=9000: a 9000-byte MTU end to end
 */
import { describe, expect, it } from 'vitest';
import { expectIntegrity, queue } from './lib/expect.ts';
import { jobResult, runOnLgnet, type RunResult } from './lib/run.ts';

const MiB = 1 << 20;
const BIT = { MRG_RXBUF: 15, RING_INDIRECT_DESC: 28, RING_EVENT_IDX: 29, VERSION_1: 32, RING_PACKED: 34 } as const;

/** The negotiated features as the guest's sysfs shows them: a string of 0/1, character i = bit i. */
function negotiated(r: RunResult): string {
  const out = jobResult(r.outcome, 'cmd')?.output ?? '';
  const m = /^[01]{64}$/m.exec(out);
  if (!m) throw new Error(`no feature string in the guest's output: ${out}`);
  return m[0];
}

function expectHealthy(r: RunResult, queues: number[]): void {
  expect(r.outcome.ready?.carrier).toBe(1);
  expect(r.outcome.errors).toEqual([]);
  expect(r.outcome.ok).toBe(true);
  for (const q of queues) expect(queue(r.metrics, q).queueBroken, `queue ${q} broken`).toBe(0);
  expect(r.lgnetLog).not.toContain('message refused');
  expect(r.lgnetExit).toBe(0);
}

describe('QEMU guest on lgnet with packed virtqueues', () => {
  it('packed=on: negotiates bit 34, pings, moves TCP both ways and 64 MiB intact', async () => {
    const SIZE = 64 * MiB;
    const r = await runOnLgnet({
      memMiB: 384,
      iperf: true,
      deviceFlags: { packed: 'on' },
      blob: { seed: 'packed-64', size: SIZE },
      guest: { jobs: ['cmd', 'ping', 'iperf3-client-tx', 'iperf3-client-rx', 'integrity'], cmd: 'cat /sys/bus/virtio/devices/virtio0/features', pingCount: 10, pingInterval: 0.1, iperfTime: 3 },
      timeoutMs: 150_000,
    });
    const f = negotiated(r);
    console.info(`[e2e] packed: ${Math.round(r.wallMs)} ms, features ${f.slice(0, 35)}`);
    expect(f[BIT.RING_PACKED], 'RING_PACKED negotiated').toBe('1');
    expect(jobResult(r.outcome, 'ping')?.received).toBe(10);
    for (const job of ['iperf3-client-tx', 'iperf3-client-rx']) {
      const res = jobResult(r.outcome, job);
      expect(res?.rc, job).toBe(0);
      expect(res!.iperf!.bytes, job).toBeGreaterThan(0);
    }
    expectIntegrity(r, SIZE);
    expectHealthy(r, [0, 1]);
  }, 200_000);

  const MATRIX: { name: string; flags: Record<string, string>; off: keyof typeof BIT }[] = [
    { name: 'mrg_rxbuf=off', flags: { mrg_rxbuf: 'off' }, off: 'MRG_RXBUF' },
    { name: 'event_idx=off', flags: { event_idx: 'off' }, off: 'RING_EVENT_IDX' },
    { name: 'indirect_desc=off', flags: { indirect_desc: 'off' }, off: 'RING_INDIRECT_DESC' },
  ];
  describe.each(MATRIX)('packed=on,$name', ({ name, flags, off }) => {
    it('negotiates packed without the feature, pings 10/10 and moves 8 MiB both ways intact', async () => {
      const SIZE = 8 * MiB;
      const r = await runOnLgnet({
        deviceFlags: { packed: 'on', ...flags },
        blob: { seed: `packed-${name}`, size: SIZE },
        guest: { jobs: ['cmd', 'ping', 'integrity'], cmd: 'cat /sys/bus/virtio/devices/virtio0/features', pingCount: 10, pingInterval: 0.1 },
      });
      const f = negotiated(r);
      expect(f[BIT.RING_PACKED]).toBe('1');
      expect(f[BIT[off]], `${off} negotiated`).toBe('0');
      expect(jobResult(r.outcome, 'ping')?.received).toBe(10);
      expectIntegrity(r, SIZE);
      expectHealthy(r, [0, 1]);
    }, 120_000);
  });

  it('packed=on,mq=on with 2 queue pairs: traffic on both pairs', async () => {
    const SIZE = 8 * MiB;
    const r = await runOnLgnet({
      queues: 2,
      vcpus: 2,
      iperf: true,
      deviceFlags: { packed: 'on' },
      blob: { seed: 'packed-mq', size: SIZE },
      guest: { jobs: ['cmd', 'ping', 'iperf3-client-tx', 'integrity'], cmd: 'cat /sys/bus/virtio/devices/virtio0/features', pingCount: 10, pingInterval: 0.1, iperfTime: 3, iperfArgs: ['-P', '4'] },
      timeoutMs: 150_000,
    });
    expect(negotiated(r)[BIT.RING_PACKED]).toBe('1');
    expect(jobResult(r.outcome, 'ping')?.received).toBe(10);
    expectIntegrity(r, SIZE);
    expectHealthy(r, [0, 1, 2, 3]);
    const tx = [1, 3].map((q) => queue(r.metrics, q).frames);
    expect(tx[0]! + tx[1]!).toBeGreaterThan(0);
    expect(Math.min(...tx), `TX frames per pair ${tx.join(', ')}`).toBeGreaterThan(0);
  }, 200_000);

  it('packed=on,host_mtu=9000: jumbo frames both ways', async () => {
    const SIZE = 8 * MiB;
    const r = await runOnLgnet({
      mtu: 9000,
      deviceFlags: { packed: 'on' },
      blob: { seed: 'packed-mtu', size: SIZE },
      guest: { jobs: ['cmd', 'ping', 'integrity'], cmd: 'cat /sys/bus/virtio/devices/virtio0/features', pingCount: 5, pingInterval: 0.2, pingSize: 8972 },
    });
    expect(negotiated(r)[BIT.RING_PACKED]).toBe('1');
    expect(r.outcome.ready?.mtu).toBe(9000);
    const ping = jobResult(r.outcome, 'ping');
    expect(ping?.received).toBe(5);
    expect(ping?.output).toContain('8980 bytes from');
    expectIntegrity(r, SIZE);
    expect(queue(r.metrics, 0).rxDropTooBig).toBe(0);
    expectHealthy(r, [0, 1]);
  }, 120_000);
});
