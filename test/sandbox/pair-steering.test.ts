/**
 * Which queue pairs take the host's frames. A multi-queue tap spreads new flows from the host over its
 * queues by a hash; a flow hashed to the queue of a pair nobody serves waits there for good. QEMU
 * disables the rings of the pairs a guest does not use (fewer vCPUs than pairs, `ethtool -L`), and a
 * VMM may set up fewer pairs than `--queues`. lgnet detaches the tap queue of a pair whose RX ring is
 * not enabled, and attaches it again when it is.
 *
 * Each case sends one datagram from each of 64 source ports of the host's namespace (64 flows: all on
 * one queue of two by chance is 2^-63) and counts what the guest receives on each pair.
 */
import { describe, expect, it } from 'vitest';
import { mask } from '../../device/features.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { netnsPrerequisites } from '../../harness/netns.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { FLOWS, sprayFlows } from '../helpers/flows.ts';
import { until, vuBedPerDescribe, type Guest } from './vhost-user-helpers.ts';

const pre = netnsPrerequisites();

describe.skipIf(!pre.ok)('host frames go only to the queue pairs the guest uses (lgnet --queues 2)', () => {
  const theBed = vuBedPerDescribe({ pairs: 2 });

  it('QEMU for a guest using one pair: pair 1 disabled, every flow arrives on pair 0', async () => {
    const bed = theBed();
    const g: Guest = await bed.guest();
    try {
      await g.fe.setVringEnable(2, false);
      await g.fe.setVringEnable(3, false);
      expect(await sprayFlows(bed.ns, bed.guestIp, g.drv, 2)).toEqual([FLOWS, 0]);
      // The guest takes the second pair (ethtool -L combined 2): flows spread over both again.
      await g.fe.setVringEnable(2, true);
      await g.fe.setVringEnable(3, true);
      const both = await sprayFlows(bed.ns, bed.guestIp, g.drv, 2);
      expect(both[0]! + both[1]!).toBe(FLOWS);
      expect(both[0], `${both}`).toBeGreaterThan(0);
      expect(both[1], `${both}`).toBeGreaterThan(0);
      // And back to one.
      await g.fe.setVringEnable(2, false);
      expect(await sprayFlows(bed.ns, bed.guestIp, g.drv, 2)).toEqual([FLOWS, 0]);
    } finally {
      g.close();
    }
    expect(await until(() => bed.server.connection === null)).toBe(true);
  });

  it('a front-end that sets up pair 0 alone (QEMU queues=1) and never names pair 1: every flow arrives on pair 0', async () => {
    const bed = theBed();
    const ram = new GuestRam(48 << 20);
    const drv = new VirtioNetDriver(ram, { features: bed.dev.offered & ~mask('RING_PACKED', 'MQ'), pairs: 1, queueSize: 256 });
    const fe = await VhostUserFrontend.connect(bed.path);
    const pair1Before = bed.dev.metrics().queues[2]!.frames;
    try {
      await fe.attachDriver(drv, ram);
      drv.fillRx(0);
      expect(await sprayFlows(bed.ns, bed.guestIp, drv, 1)).toEqual([FLOWS]);
      const q = bed.dev.metrics().queues;
      expect(q[2]!.frames - pair1Before).toBe(0);
      expect(q.every((x) => x.broken === null)).toBe(true);
    } finally {
      fe.close();
      drv.close();
      ram.close();
    }
  });
});
