/**
 * A real guest on lgnet with QEMU's virtio-net-pci feature flags turned off one by one, and with a
 * 9000-byte MTU end to end. Each run is a fresh namespace, lgnet, blob server and QEMU (lib/run.ts).
 *
 *   feature matrix: mrg_rxbuf=off, event_idx=off, indirect_desc=off, csum=off+guest_csum=off. The
 *     guest's negotiated feature bits (sysfs) show the feature really is off; 10 pings with 0% loss; an
 *     8 MiB blob crosses host→guest and back with the known sha256.
 *   MTU 9000: lgnet --mtu 9000, tap MTU 9000, host_mtu=9000 and guest MTU 9000. 8972-byte ICMP payloads
 *     (9000-byte IP packets) both ways: the host pings with DF set (ping -M do), the guest pings too, and
 *     neither side's IP stack fragmented or reassembled anything (/proc/net/snmp on both sides). lgnet
 *     serve runs with --pcap: tcpdump finds every jumbo echo, whole, in the capture.
 *   macvtap: lgnet serve --tap lgmvt0, a macvtap on one end of a veth pair with the host on the other
 *     (a guest attached straight to a host NIC): 10 pings and an 8 MiB blob both ways intact.
 *   IOMMU: lgnet serve --iommu under a q35 guest with an intel-iommu (device IOTLB) in front of the NIC
 *     (iommu_platform=on, ats=on): the guest's DMA goes through the IOMMU (its log says so), lgnet
 *     negotiates ACCESS_PLATFORM and asks QEMU for the mappings it lacks; 10 pings and a 1 MiB blob both
 *     ways intact. And iommu_platform=on with no IOMMU, as a confidential guest has it: the guest
 *     negotiates ACCESS_PLATFORM, QEMU keeps it from lgnet, and lgnet serves guest physical addresses.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expectIntegrity, queue } from './lib/expect.ts';
import { GUEST, GUEST_MAC, HOST, guestAwaitEchos, jobResult, run, runOnLgnet, type RunResult } from './lib/run.ts';

const MiB = 1 << 20;

/** virtio feature bit numbers (virtio 1.x, virtio-net). */
const BIT = { CSUM: 0, GUEST_CSUM: 1, MRG_RXBUF: 15, RING_INDIRECT_DESC: 28, RING_EVENT_IDX: 29, VERSION_1: 32, ACCESS_PLATFORM: 33 } as const;

/** The negotiated features as the guest's sysfs shows them: a string of 0/1, character i = bit i. */
function negotiated(r: RunResult): string {
  const out = jobResult(r.outcome, 'cmd')?.output ?? '';
  const m = /^[01]{64}$/m.exec(out);
  if (!m) throw new Error(`no feature string in the guest's output: ${out}`);
  return m[0];
}

const MATRIX: { name: string; flags: Record<string, string>; off: (keyof typeof BIT)[] }[] = [
  { name: 'mrg_rxbuf=off', flags: { mrg_rxbuf: 'off' }, off: ['MRG_RXBUF'] },
  { name: 'event_idx=off', flags: { event_idx: 'off' }, off: ['RING_EVENT_IDX'] },
  { name: 'indirect_desc=off', flags: { indirect_desc: 'off' }, off: ['RING_INDIRECT_DESC'] },
  { name: 'csum=off,guest_csum=off (offloads off)', flags: { csum: 'off', guest_csum: 'off' }, off: ['CSUM', 'GUEST_CSUM'] },
];

describe.each(MATRIX)('QEMU guest on lgnet with virtio-net-pci $name', ({ name, flags, off }) => {
  const SIZE = 8 * MiB;
  it(`negotiates without the feature, pings 10/10 and moves 8 MiB both ways intact`, async () => {
    const r = await runOnLgnet({
      deviceFlags: flags,
      blob: { seed: `matrix-${name}`, size: SIZE },
      guest: { jobs: ['cmd', 'ping', 'integrity'], cmd: 'cat /sys/bus/virtio/devices/virtio0/features', pingCount: 10, pingInterval: 0.1 },
    });
    const integ = jobResult(r.outcome, 'integrity');
    console.info(`[e2e] ${name}: ${Math.round(r.wallMs)} ms, features ${negotiated(r).slice(0, 33)}, 8 MiB in ${integ?.rx_s} s, back in ${integ?.tx_s} s`);
    expect(r.outcome.ready?.carrier).toBe(1);
    const f = negotiated(r);
    expect(f[BIT.VERSION_1]).toBe('1');
    for (const b of off) expect(f[BIT[b]], `${b} negotiated`).toBe('0');
    const ping = jobResult(r.outcome, 'ping');
    expect(ping?.transmitted).toBe(10);
    expect(ping?.received).toBe(10);
    expectIntegrity(r, SIZE);
    expect(r.outcome.ok).toBe(true);
    expect(queue(r.metrics, 0).queueBroken + queue(r.metrics, 1).queueBroken).toBe(0);
    // QEMU leaves the TSO bits on with csum=off; Linux then sends no GSO frames, and lgnet dropped none.
    const tx = queue(r.metrics, 1);
    expect(tx.txDropGsoWithoutCsum + tx.txDropGsoNotNegotiated + tx.txDropCsumNotNegotiated).toBe(0);
    expect(r.lgnetLog).not.toContain('message refused');
    expect(r.lgnetExit).toBe(0);
  }, 120_000);
});

describe('QEMU guest on lgnet serving a macvtap (--tap naming a macvtap)', () => {
  const SIZE = 8 * MiB;
  it('the guest on a macvtap of a veth end pings the host on the other end 10/10 and moves 8 MiB both ways intact', async () => {
    const r = await runOnLgnet({
      macvtap: true,
      serveArgs: ['--log-level', 'info'],
      blob: { seed: 'macvtap', size: SIZE },
      guest: { jobs: ['ping', 'integrity'], pingCount: 10, pingInterval: 0.1 },
    });
    const integ = jobResult(r.outcome, 'integrity');
    console.info(`[e2e] macvtap: ${Math.round(r.wallMs)} ms, 8 MiB in ${integ?.rx_s} s, back in ${integ?.tx_s} s`);
    expect(r.outcome.ready?.carrier).toBe(1);
    // lgnet opened the macvtap's device and gave it the guest's address (--mac) in place of the
    // kernel's random one: without that the host's replies would never reach the guest.
    const serving = r.lgnetLog.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => String(l.msg).startsWith('serving a macvtap'));
    expect(serving, r.lgnetLog.slice(-3000)).toMatchObject({ macvtap: 'lgmvt0', mac: GUEST_MAC });
    expect(serving?.['replaced']).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    expect(serving?.['replaced']).not.toBe(GUEST_MAC);
    const ping = jobResult(r.outcome, 'ping');
    expect(ping?.transmitted).toBe(10);
    expect(ping?.received).toBe(10);
    expectIntegrity(r, SIZE);
    expect(r.outcome.ok).toBe(true);
    expect(queue(r.metrics, 0).queueBroken + queue(r.metrics, 1).queueBroken).toBe(0);
    expect(queue(r.metrics, 1).txDropBackend).toBe(0);
    expect(r.lgnetExit).toBe(0);
  }, 120_000);
});

/** Named counters of one protocol line pair of /proc/net/snmp ("Ip:", "Icmp:"). */
function snmp(text: string, proto: string): Record<string, number> {
  const lines = text.split('\n').filter((l) => l.startsWith(`${proto}: `));
  if (lines.length < 2) throw new Error(`no ${proto} lines in ${text.slice(0, 2000)}`);
  const names = lines[0]!.split(/\s+/).slice(1);
  const values = lines[1]!.split(/\s+/).slice(1).map(Number);
  return Object.fromEntries(names.map((n, i) => [n, values[i]!]));
}

describe('QEMU guest on lgnet with MTU 9000', () => {
  it('9000-byte IP packets cross both ways without fragmentation (ping -s 8972 -M do)', async () => {
    let hostPing = { code: null as number | null, out: '' };
    let hostSnmp = '';
    // The guest answers the host's pings while it runs its own, then waits until it has answered 5
    // echo requests (at most 15 s) and prints its counters.
    const waitEchos = guestAwaitEchos(5, 15, 'cat /proc/net/snmp');
    // lgnet serve also captures (--pcap) every frame, read back with tcpdump below.
    const pcapDir = mkdtempSync(join(tmpdir(), 'lgnet-e2e-pcap-'));
    const pcap = join(pcapDir, 'mtu9000.pcap');
    const r = await runOnLgnet({
      mtu: 9000,
      serveArgs: ['--pcap', pcap],
      guest: { jobs: ['ping', 'cmd'], pingCount: 5, pingInterval: 0.2, pingSize: 8972, cmd: waitEchos },
      during: async ({ net }) => {
        hostPing = await run(['ip', 'netns', 'exec', net.ns, 'ping', '-M', 'do', '-s', '8972', '-c', '5', '-i', '0.2', '-W', '3', GUEST], 20_000);
        hostSnmp = (await run(['ip', 'netns', 'exec', net.ns, 'cat', '/proc/net/snmp'], 5000)).out;
      },
    });
    console.info(`[e2e] MTU 9000: ${Math.round(r.wallMs)} ms; host: ${hostPing.out.split('\n').find((l) => /packets transmitted/.test(l))}`);
    expect(r.outcome.ready?.mtu).toBe(9000);
    // host → guest, DF set: iputils ping refuses to fragment, so 5 replies mean 9000-byte packets passed
    expect(hostPing.code, hostPing.out).toBe(0);
    expect(hostPing.out).toMatch(/5 packets transmitted, 5 received/);
    expect(hostPing.out).toContain(`8980 bytes from ${GUEST}`);
    // guest → host with busybox ping (it has no -M): the counters below prove no fragments either
    const ping = jobResult(r.outcome, 'ping');
    expect(ping?.received).toBe(5);
    expect(ping?.output).toContain(`8980 bytes from ${HOST}`);
    const gIp = snmp(jobResult(r.outcome, 'cmd')?.output ?? '', 'Ip');
    const gIcmp = snmp(jobResult(r.outcome, 'cmd')?.output ?? '', 'Icmp');
    const hIp = snmp(hostSnmp, 'Ip');
    expect(gIcmp.InEchos).toBeGreaterThanOrEqual(5);
    expect(gIcmp.OutEchoReps).toBeGreaterThanOrEqual(5);
    for (const [side, ip] of [['guest', gIp], ['host', hIp]] as const) {
      expect(ip.FragCreates, `${side} FragCreates`).toBe(0);
      expect(ip.FragOKs, `${side} FragOKs`).toBe(0);
      expect(ip.ReasmReqds, `${side} ReasmReqds`).toBe(0);
    }
    expect(r.outcome.ok).toBe(true);
    expect(queue(r.metrics, 0).rxDropTooBig).toBe(0);
    // The capture holds the jumbo echoes of both pings, each whole, as the guest sent and got them.
    const dump = spawnSync('tcpdump', ['-r', pcap, '-nn', 'icmp'], { encoding: 'utf8' });
    rmSync(pcapDir, { recursive: true, force: true });
    expect(dump.status, dump.stderr).toBe(0);
    for (const [src, dst, kind] of [[HOST, GUEST, 'request'], [GUEST, HOST, 'reply'], [GUEST, HOST, 'request'], [HOST, GUEST, 'reply']]) {
      const n = dump.stdout.split('\n').filter((l) => l.includes(`${src} > ${dst}: ICMP echo ${kind}`) && l.includes('length 8980')).length;
      expect(n, `${src} > ${dst} echo ${kind}`).toBeGreaterThanOrEqual(5);
    }
    expect(queue(r.metrics, 0).captured + queue(r.metrics, 1).captured).toBeGreaterThanOrEqual(20);
  }, 120_000);
});

describe('QEMU guest on lgnet behind a virtual IOMMU (--iommu)', () => {
  const SIZE = 1 * MiB;
  const featuresNegotiated = (log: string): string[] => {
    const line = log.split('\n').find((l) => l.includes('"features negotiated"'));
    return line ? (JSON.parse(line) as { features: string[] }).features : [];
  };

  it('intel-iommu with a device IOTLB: ACCESS_PLATFORM, misses served by QEMU, pings 10/10 and 1 MiB both ways intact', async () => {
    const r = await runOnLgnet({
      iommu: 'intel',
      blob: { seed: 'iommu-intel', size: SIZE },
      guest: { jobs: ['cmd', 'ping', 'integrity'], cmd: 'cat /sys/bus/virtio/devices/virtio0/features; dmesg | grep -c "Adding to iommu group"', pingCount: 10, pingInterval: 0.1 },
    });
    const rx = queue(r.metrics, 0);
    const tx = queue(r.metrics, 1);
    console.info(`[e2e] intel-iommu: ${Math.round(r.wallMs)} ms, IOTLB misses rx ${rx.iotlbMisses} tx ${tx.iotlbMisses}`);
    const f = negotiated(r);
    expect(f[BIT.ACCESS_PLATFORM]).toBe('1');
    // Devices were put behind the IOMMU (the guest's DMA is translated, not passed through).
    expect(Number(/^(\d+)$/m.exec(jobResult(r.outcome, 'cmd')?.output ?? '')?.[1] ?? 0)).toBeGreaterThan(0);
    expect(featuresNegotiated(r.lgnetLog)).toContain('ACCESS_PLATFORM');
    expect(rx.iotlbMisses).toBeGreaterThan(0);
    expect(tx.iotlbMisses).toBeGreaterThan(0);
    const ping = jobResult(r.outcome, 'ping');
    expect(ping?.received).toBe(10);
    expectIntegrity(r, SIZE);
    expect(r.outcome.ok).toBe(true);
    expect(rx.queueBroken + tx.queueBroken).toBe(0);
    expect(r.lgnetLog).not.toContain('message refused');
  });

  it('iommu_platform=on without an IOMMU: the guest negotiates ACCESS_PLATFORM, lgnet serves guest physical addresses', async () => {
    const r = await runOnLgnet({
      iommu: 'platform-only',
      blob: { seed: 'iommu-platform', size: SIZE },
      guest: { jobs: ['cmd', 'ping', 'integrity'], cmd: 'cat /sys/bus/virtio/devices/virtio0/features', pingCount: 5, pingInterval: 0.1 },
    });
    expect(negotiated(r)[BIT.ACCESS_PLATFORM]).toBe('1');
    expect(featuresNegotiated(r.lgnetLog)).not.toContain('ACCESS_PLATFORM');
    expect(featuresNegotiated(r.lgnetLog)).toContain('VERSION_1');
    expect(queue(r.metrics, 0).iotlbMisses + queue(r.metrics, 1).iotlbMisses).toBe(0);
    expect(jobResult(r.outcome, 'ping')?.received).toBe(5);
    expectIntegrity(r, SIZE);
    expect(r.outcome.ok).toBe(true);
  });
});
