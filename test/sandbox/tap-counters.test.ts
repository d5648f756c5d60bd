/**
 * The tap's kernel counters (sandbox/metrics-tap.ts) served as lgnet_tap_*: parsed from the kernel's
 * /proc/net/dev format, read in the tap's namespace, refused for a tap in another one, and, on a live
 * device whose guest gives no RX buffers, closing the account: every frame the tap queued for lgnet
 * is delivered to the guest or counted dropped by lgnet, and every datagram the host sent is one of
 * those or counted dropped by the tap.
 */
import { describe, expect, it } from 'vitest';
import { mask } from '../../device/features.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { createNetns, destroyAllNetns, netnsPrerequisites } from '../../harness/netns.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import * as native from '../../native/index.ts';
import { parseNetDev, TapCounters } from '../../sandbox/metrics-tap.ts';
import { PrometheusExporter } from '../../sandbox/prometheus.ts';
import { parseExposition, promtool, valueOf, type Sample } from './metrics-helpers.ts';
import { udpSend, until, vuBedPerDescribe } from './vhost-user-helpers.ts';

const pre = netnsPrerequisites();

const NET_DEV = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
lgtap01: 7 7 7 7 0 0 0 0 7 7 7 7 0 0 0 0
lgtap0: 123456789012  4567    1    2    0     0          0         3  98765   4321    5   66    0     0       0          0
`;

describe('parseNetDev', () => {
  it("reads one interface's receive and transmit columns, named from the guest's side", () => {
    expect(parseNetDev(NET_DEV, 'lgtap0')).toEqual({
      fromGuest: { bytes: 123456789012, frames: 4567, errors: 1, dropped: 2 },
      toGuest: { bytes: 98765, frames: 4321, errors: 5, dropped: 66 },
    });
    expect(parseNetDev(NET_DEV, 'lo')?.toGuest.frames).toBe(10);
  });
  it('finds no interface by a prefix, a missing name, or a line cut short', () => {
    expect(parseNetDev(NET_DEV, 'lgtap')).toBeUndefined();
    expect(parseNetDev(NET_DEV, 'eth9')).toBeUndefined();
    expect(parseNetDev('lgtap0: 1 2 3\n', 'lgtap0')).toBeUndefined();
  });
});

describe.skipIf(!pre.ok)("the tap's kernel counters", () => {
  it('refuses a tap whose interface is in another namespace, and reads it from its own', () => {
    const ns = createNetns('lgtc');
    try {
      // Another interface of the same name here would be read instead: the namespace is checked first.
      const t = native.withNetns(ns.path, () => native.tapOpen({ name: 'lgtcx0', vnetHdr: true }));
      try {
        const here = new TapCounters('lgtcx0', t.fd);
        expect(here.unavailable).toBe('the tap is in another network namespace');
        expect(here.sample()).toBeUndefined();
        const there = native.withNetns(ns.path, () => new TapCounters('lgtcx0', t.fd));
        try {
          expect(there.unavailable).toBeUndefined();
          expect(there.sample()).toMatchObject({ toGuest: { dropped: 0 }, fromGuest: { frames: 0 } });
        } finally {
          there.close();
        }
        const missing = native.withNetns(ns.path, () => new TapCounters('lgtcnone'));
        expect(missing.unavailable).toBe('the tap is not listed');
        missing.close();
      } finally {
        native.close(t.fd);
      }
    } finally {
      destroyAllNetns();
    }
  });

  describe('on a live device whose guest gives no RX buffers', () => {
    const theBed = vuBedPerDescribe();
    const QSIZE = 64;
    const SENT = 2000;
    const PORT = 7300;

    it(`accounts for all of ${SENT} datagrams: delivered, dropped by lgnet, or dropped by the tap`, async () => {
      const bed = theBed();
      // The tap's queue to lgnet is txqueuelen frames: small, so that it overflows within the burst.
      bed.ns.exec('ip', 'link', 'set', 'lgtap0', 'txqueuelen', '100');
      bed.ns.exec('sysctl', '-q', '-w', 'net.ipv6.conf.lgtap0.disable_ipv6=1');
      const tap = native.withNetns(bed.ns.path, () => new TapCounters('lgtap0'));
      const exporter = new PrometheusExporter({ device: () => bed.dev.metrics(), server: bed.server, tap, version: 'test' });
      const ram = new GuestRam(24 << 20);
      const drv = new VirtioNetDriver(ram, { features: bed.dev.offered & ~mask('RING_PACKED'), pairs: 1, queueSize: QSIZE });
      const fe = await VhostUserFrontend.connect(bed.path);
      try {
        await fe.attachDriver(drv, ram);
        const scrape = async (): Promise<Sample[]> => parseExposition(await exporter.scrape());
        const account = (s: Sample[]) => {
          const l = (direction: string) => ({ interface: 'lgtap0', direction });
          const rxDrops = s.filter((x) => x.name === 'lgnet_queue_dropped_frames_total' && x.labels['direction'] === 'rx').reduce((a, x) => a + x.value, 0);
          return {
            tapToGuest: valueOf(s, 'lgnet_tap_frames_total', l('to_guest'))!,
            tapDropped: valueOf(s, 'lgnet_tap_dropped_frames_total', l('to_guest'))!,
            tapFromGuest: valueOf(s, 'lgnet_tap_frames_total', l('from_guest'))!,
            lgnetRx: valueOf(s, 'lgnet_queue_frames_total', { queue: '0', direction: 'rx' })!,
            lgnetRxDrops: rxDrops,
          };
        };
        const before = account(await scrape());
        expect(before.tapDropped).toBe(0);

        // One fill of the ring and no more while the host sends: lgnet fills QSIZE buffers, then the
        // tap's queue fills, then the kernel drops.
        drv.fillRx();
        let got = 0;
        const take = (): void => {
          for (const r of drv.receive()) if (r.frame.length >= 38 && r.frame[23] === 17 && ((r.frame[36]! << 8) | r.frame[37]!) === PORT) got++;
        };
        const sender = udpSend(bed.ns, bed.guestIp, PORT, 200, SENT, 0);
        const exited = new Promise<number | null>((res) => sender.on('exit', (code) => res(code)));
        try {
          expect(await exited).toBe(0);
        } finally {
          sender.kill();
        }
        // Now give buffers until nothing more comes: what the tap still queued reaches the guest.
        let last = -1;
        let quietSince = Date.now();
        await until(() => {
          take();
          drv.fillRx();
          if (got !== last) {
            last = got;
            quietSince = Date.now();
          }
          return Date.now() - quietSince > 500;
        }, 15_000, 5);
        const after = account(await scrape());
        const d = (k: keyof typeof after) => after[k] - before[k];

        expect(d('tapDropped'), JSON.stringify({ before, after, got })).toBeGreaterThan(0);
        // lgnet counts every frame it read from the tap: delivered or dropped with a reason.
        expect(d('lgnetRx') + d('lgnetRxDrops')).toBe(d('tapToGuest'));
        // The host's datagrams: read by lgnet or dropped by the tap (IPv6 is off, the neighbour
        // static: nothing else goes to the guest).
        expect(d('tapToGuest') + d('tapDropped')).toBe(SENT);
        expect(got).toBe(d('lgnetRx'));
        expect(d('tapFromGuest')).toBe(0);
        const check = promtool(await exporter.scrape());
        expect(check, check.output).toEqual({ status: 0, output: '' });
      } finally {
        fe.close();
        drv.close();
        ram.close();
        tap.close();
      }
    });
  });
});
