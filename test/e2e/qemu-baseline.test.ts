/**
 * Baseline: the test guest on QEMU's own userspace virtio-net (`-netdev tap,vhost=off`, vectors=0
 * under TCG), on a tap inside a namespace this test makes. This is the reference lgnet is compared to.
 * One boot: ping the host side 10 times, then 3 s of iperf3 TCP guest→host and 3 s host→guest (-R).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootGuest, ensureGuestImage, type GuestHandle, type GuestOutcome } from '../../scripts/qemu.ts';
import { createTapNamespace, type TapNamespace } from '../../scripts/netns.ts';

const HOST = '10.0.2.1';
const GUEST = '10.0.2.2';

describe('QEMU baseline: guest on tap with QEMU userspace virtio-net', () => {
  let net: TapNamespace | undefined;
  let guest: GuestHandle | undefined;
  let outcome: GuestOutcome;

  beforeAll(async () => {
    // Builds the image when missing (CI builds it beforehand); fails with the script's output if it cannot.
    ensureGuestImage();
    net = createTapNamespace({ hostCidr: `${HOST}/24` });
    await net.startIperf3Server({ port: 5201 });
    guest = bootGuest({
      netns: net.ns,
      netdev: { type: 'tap', ifname: net.tap },
      guest: {
        ip: `${GUEST}/24`,
        peer: HOST,
        jobs: ['ping', 'iperf3-client-tx', 'iperf3-client-rx'],
        pingCount: 10,
        iperfTime: 3,
      },
      timeoutMs: 90_000,
    });
    outcome = await guest.done;
    if (!outcome.ok) {
      console.error(`guest failed: ${JSON.stringify({ ...outcome, serial: undefined, results: undefined })}\n${outcome.serial}\n${outcome.stderr}`);
    }
  }, 180_000);

  afterAll(async () => {
    await guest?.kill();
    await net?.destroy();
  }, 30_000);

  it('boots, brings the link up and powers off cleanly', () => {
    expect(outcome.timedOut).toBe(false);
    expect(outcome.errors).toEqual([]);
    expect(outcome.ready?.carrier).toBe(1);
    expect(outcome.ready?.ip).toBe(`${GUEST}/24`);
    expect(outcome.done?.failed).toBe(0);
    expect(outcome.exitCode).toBe(0);
    expect(outcome.ok).toBe(true);
  });

  it('pings the host side 10 times with 0% loss', () => {
    const ping = outcome.results.find((r) => r.job === 'ping');
    expect(ping, 'ping result').toBeDefined();
    expect(ping!.rc).toBe(0);
    expect(ping!.transmitted).toBe(10);
    expect(ping!.received).toBe(10);
    expect(ping!.loss_pct).toBe(0);
    expect(ping!.rtt_avg_ms).toBeGreaterThan(0);
  });

  it('moves TCP data guest→host and host→guest', () => {
    const tx = outcome.results.find((r) => r.job === 'iperf3-client-tx');
    const rx = outcome.results.find((r) => r.job === 'iperf3-client-rx');
    expect(tx?.rc).toBe(0);
    expect(rx?.rc).toBe(0);
    expect(tx?.iperf?.bitsPerSecond).toBeGreaterThan(0);
    expect(rx?.iperf?.bitsPerSecond).toBeGreaterThan(0);
    const ping = outcome.results.find((r) => r.job === 'ping');
    const fmt = (b?: number) => `${((b ?? 0) / 1e9).toFixed(2)} Gbit/s`;
    console.log(
      `[qemu-baseline] accel=${guest!.accel} boot(init)=${outcome.bootMs?.toFixed(0)} ms ready=${outcome.readyMs?.toFixed(0)} ms ` +
        `total=${outcome.totalMs.toFixed(0)} ms ping avg=${ping?.rtt_avg_ms} ms ` +
        `tcp guest→host=${fmt(tx?.iperf?.bitsPerSecond)} host→guest=${fmt(rx?.iperf?.bitsPerSecond)}`,
    );
  });
});
