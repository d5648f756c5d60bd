/**
 * The big one: a real Linux guest under QEMU 7.2, its kernel virtio-net driver talking to lgnet over
 * vhost-user. `lgnet serve --tap lgtap0` runs inside a test namespace (ip netns exec) and attaches to
 * the tap createTapNamespace made; QEMU connects to lgnet's socket (client, with reconnect). The host
 * side of the tap (10.0.2.1) runs iperf3 and the integrity blob server. lgnet's own counters are read
 * from its --metrics-socket. Everything is killed by pid and removed afterwards (lib/run.ts).
 *
 *   1. link, ping, throughput, integrity: link up, 20 pings with 0% loss, iperf3 TCP 5 s each way,
 *      a 64 MiB blob with a known sha256 host→guest and back guest→host
 *   2. the back-end is SIGKILLed under a running guest and started again on the same socket: the
 *      guest's pings resume within 5 s, then 8 MiB cross both ways intact, and no queue is stalled
 *   3. two queue pairs, two vCPUs: lgnet's metrics show frames on both RX and both TX queues; two
 *      pairs offered to one vCPU: the guest uses one, and the host reaches it from 16 addresses (that
 *      lgnet runs with no capability, on the tap's fds handed over with --tap-fd)
 *   4. the handshake alone: QEMU prints no warning about lgnet as its back-end; with --offer-config it
 *      does (the CONFIG protocol feature, which QEMU's virtio-net refuses), which is why it is opt-in
 *
 * Every run also checks QEMU's stderr for warnings about the back-end (lib/expect.ts backendWarnings).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readMetrics, type MetricsDocument } from '../../sandbox/metrics-endpoint.ts';
import { bootGuest, ensureGuestImage, type GuestHandle, type GuestOutcome } from '../../scripts/qemu.ts';
import { createTapNamespace, type TapNamespace } from '../../scripts/netns.ts';
import { blobSha256, startBlobServer, type BlobServer } from './lib/blob.ts';
import { killLgnet, startLgnet, stopLgnet, type Lgnet } from './lib/lgnet.ts';
import { backendWarnings, expectIntegrity, queue } from './lib/expect.ts';
import { capEff } from '../helpers/caps.ts';
import { GUEST, HOST, XFER_PORT, guestAwaitEchos, jobResult, run, runOnLgnet, type RunResult } from './lib/run.ts';

const MiB = 1 << 20;

describe('QEMU guest on lgnet (vhost-user): link, ping, throughput, 64 MiB integrity', () => {
  const SIZE = 64 * MiB;
  let r: RunResult;

  beforeAll(async () => {
    r = await runOnLgnet({
      memMiB: 384, // 64 MiB of blob in the guest's tmpfs
      iperf: true,
      blob: { seed: 'e2e-64', size: SIZE },
      guest: { jobs: ['ping', 'iperf3-client-tx', 'iperf3-client-rx', 'integrity'], pingCount: 20, pingInterval: 0.2, iperfTime: 5 },
      timeoutMs: 150_000,
    });
    const tx = jobResult(r.outcome, 'iperf3-client-tx')?.iperf;
    const rx = jobResult(r.outcome, 'iperf3-client-rx')?.iperf;
    const integ = jobResult(r.outcome, 'integrity');
    console.info(
      `[e2e] ${Math.round(r.wallMs)} ms: ping avg ${jobResult(r.outcome, 'ping')?.rtt_avg_ms} ms, ` +
        `tcp guest→host ${((tx?.bitsPerSecond ?? 0) / 1e9).toFixed(2)} Gbit/s, host→guest ${((rx?.bitsPerSecond ?? 0) / 1e9).toFixed(2)} Gbit/s, ` +
        `64 MiB in ${integ?.rx_s} s, back in ${integ?.tx_s} s`,
    );
  }, 200_000);

  it('boots with the link up on lgnet and powers off cleanly', () => {
    expect(r.outcome.timedOut).toBe(false);
    expect(r.outcome.ready?.carrier).toBe(1);
    expect(r.outcome.ready?.ip).toBe(`${GUEST}/24`);
    expect(r.outcome.errors).toEqual([]);
    expect(r.outcome.ok).toBe(true);
  });

  it('pings the host 20 times with 0% loss', () => {
    const ping = jobResult(r.outcome, 'ping');
    expect(ping, 'ping result').toBeDefined();
    expect(ping!.rc).toBe(0);
    expect(ping!.transmitted).toBe(20);
    expect(ping!.received).toBe(20);
  });

  it('moves TCP data for 5 s guest→host and host→guest (iperf3) with non-zero throughput', () => {
    for (const job of ['iperf3-client-tx', 'iperf3-client-rx']) {
      const res = jobResult(r.outcome, job);
      expect(res?.rc, job).toBe(0);
      expect(res!.iperf, `${job}: ${res!.output?.slice(0, 500)}`).toBeDefined();
      expect(res!.iperf!.seconds).toBeGreaterThanOrEqual(4.5);
      expect(res!.iperf!.bytes).toBeGreaterThan(0);
      expect(res!.iperf!.bitsPerSecond).toBeGreaterThan(0);
    }
  });

  it('a 64 MiB blob crosses host→guest and guest→host with the known sha256', () => {
    expectIntegrity(r, SIZE);
  });

  it("lgnet's own counters saw the traffic, without drops or broken queues", () => {
    const rx = queue(r.metrics, 0);
    const tx = queue(r.metrics, 1);
    // ≥ the blob one way, ≥ the blob back the other way (plus iperf3 in both)
    expect(rx.bytes).toBeGreaterThan(SIZE);
    expect(tx.bytes).toBeGreaterThan(SIZE);
    expect(rx.interrupts).toBeGreaterThan(0);
    for (const q of [rx, tx]) {
      expect(q.broken).toBeNull();
      expect(q.queueBroken).toBe(0);
      expect(q.rxDropShortBuffer + q.rxDropTooBig + q.rxDropBackend).toBe(0);
      expect(q.txDropShort + q.txDropTooBig + q.txDropBackend + q.txDropGsoNotNegotiated + q.txDropCsumNotNegotiated).toBe(0);
    }
  });

  it('lgnet served the connection without refusing a message, and exited 0 on SIGTERM', () => {
    expect(r.lgnetLog).toContain('front-end connected');
    expect(r.lgnetLog).not.toContain('message refused');
    expect(r.lgnetExit).toBe(0);
  });

  it('QEMU printed no warning about its vhost-user back-end', () => {
    expect(r.outcome.stderr).toBeDefined();
    expect(backendWarnings(r.outcome.stderr), r.outcome.stderr).toEqual([]);
  });
});

// On packed rings QEMU 7.2 gives the new back-end a stale ring base (it keeps no used index to
// restore it from): lgnet resumes where the ring itself shows (vring/packed-resume.ts) and counts it.
describe.each([
  { ring: 'split', deviceFlags: {} as Record<string, string> },
  { ring: 'packed', deviceFlags: { packed: 'on' } as Record<string, string> },
])('QEMU guest on lgnet ($ring rings): the back-end is SIGKILLed and restarted under a running guest', ({ ring, deviceFlags }) => {
  const SIZE = 8 * MiB;
  const PINGS = 60;
  const INTERVAL = 0.2;
  let net: TapNamespace | undefined;
  let guest: GuestHandle | undefined;
  const lgnets: Lgnet[] = [];
  let dir: string | undefined;
  let outcome: GuestOutcome;
  let blob: BlobServer;
  let sha: string;
  const log: string[] = [];
  /** performance.now() of every ping reply line, with its seq. */
  const replies: { seq: number; at: number }[] = [];
  let killedAt = 0;
  let killSignal: NodeJS.Signals | null = null;
  let metricsAfter: MetricsDocument | undefined;
  let metricsError = '';

  beforeAll(async () => {
    const t0 = performance.now();
    ensureGuestImage();
    net = createTapNamespace({ hostCidr: `${HOST}/24` });
    dir = mkdtempSync(join(tmpdir(), 'lgnet-e2e-'));
    const socket = join(dir, 'lgnet.sock');
    const metricsSocket = join(dir, 'lgnet.metrics');
    sha = blobSha256('e2e-reconnect', SIZE);
    blob = await startBlobServer(net, { host: HOST, port: XFER_PORT, seed: 'e2e-reconnect', size: SIZE });
    lgnets.push(await startLgnet(net.ns, socket, net.tap, log, ['--metrics-socket', metricsSocket]));
    let afterIntegrity: Promise<void> | undefined;
    guest = bootGuest({
      netns: net.ns,
      netdev: { type: 'vhost-user', socket, reconnect: 1 },
      deviceFlags,
      // ping-live prints each reply as it arrives; after it, 8 MiB each way through the new lgnet; then
      // the guest prints the features its driver negotiated and waits 3 s, so that the queues can be
      // inspected while the driver still owns them.
      guest: {
        ip: `${GUEST}/24`, peer: HOST, xferPort: XFER_PORT, jobs: ['ping-live', 'integrity', 'cmd'],
        cmd: 'cat /sys/bus/virtio/devices/virtio0/features; sleep 3', pingCount: PINGS, pingInterval: INTERVAL,
      },
      timeoutMs: 120_000,
      onLine: (line) => {
        const m = /bytes from .* seq=(\d+)/.exec(line);
        if (m) replies.push({ seq: Number(m[1]), at: performance.now() });
        if (line.startsWith('LGNET-RESULT {"job":"integrity"')) {
          afterIntegrity = readMetrics(metricsSocket).then(
            (m2) => void (metricsAfter = m2),
            (e: Error) => void (metricsError = e.message),
          );
        }
      },
    });
    await guest.ready;
    // Pings are flowing through the first lgnet: wait for 5 replies, then SIGKILL it (no cleanup at all).
    await guest.waitForLine(/seq=4 /, 20_000);
    killedAt = performance.now();
    killSignal = await killLgnet(lgnets[0]!.child);
    // Same socket path: the stale socket file is left by the killed process; QEMU reconnects within ~1 s.
    lgnets.push(await startLgnet(net.ns, socket, net.tap, log, ['--metrics-socket', metricsSocket]));
    outcome = await guest.done;
    await afterIntegrity;
    console.info(`[e2e] SIGKILL/restart run: ${Math.round(performance.now() - t0)} ms`);
    if (!outcome.ok) {
      console.error(`guest: ${JSON.stringify({ ...outcome, serial: undefined })}\n${outcome.serial.slice(-6000)}\n--- lgnet ---\n${log.join('').slice(-20_000)}`);
    }
  }, 200_000);

  afterAll(async () => {
    await guest?.kill();
    for (const l of lgnets) await stopLgnet(l.child);
    await net?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  it('the first lgnet died of SIGKILL while pings were flowing through it', () => {
    expect(killSignal).toBe('SIGKILL');
    expect(replies.filter((p) => p.at < killedAt).length).toBeGreaterThanOrEqual(5);
  });

  it("QEMU reconnects to the new lgnet and the guest's ping resumes within 5 s of its start", () => {
    const readyAt = lgnets[1]!.readyAt;
    const first = replies.find((p) => p.at > readyAt);
    const lastBefore = [...replies].reverse().find((p) => p.at < killedAt);
    console.info(
      `[e2e] restart: lgnet ready ${Math.round(readyAt - killedAt)} ms after SIGKILL; first reply ${first ? Math.round(first.at - readyAt) : '-'} ms after ready ` +
        `(seq ${lastBefore?.seq} → ${first?.seq}); ${replies.length}/${PINGS} replies`,
    );
    expect(first, 'a ping reply after the restart').toBeDefined();
    expect(first!.at - readyAt).toBeLessThan(5000);
    expect(log.join('').match(/front-end connected/g)?.length).toBe(2);
    expect(log.join('')).not.toContain('message refused');
    // Two handshakes, and no warning about the back-end from either.
    expect(backendWarnings(outcome.stderr), outcome.stderr).toEqual([]);
    // Once resumed, every later ping is answered: no stall after the first replies.
    const after = replies.filter((p) => p.seq >= first!.seq).map((p) => p.seq);
    expect(after.length).toBe(PINGS - first!.seq);
  });

  it('after the reconnect 8 MiB cross both ways intact', () => {
    const res = jobResult(outcome, 'integrity');
    expect(res?.rx_sha256).toBe(sha);
    expect(res?.rx_bytes).toBe(SIZE);
    const got = blob.events.filter((e) => e.event === 'received');
    expect(got).toHaveLength(1);
    expect(got[0]!.bytes).toBe(SIZE);
    expect(got[0]!.sha256).toBe(sha);
    expect(outcome.ok).toBe(true);
  });

  it('no queue of the new lgnet is stalled: both run, unbroken, and moved the transfer', () => {
    expect(metricsError).toBe('');
    expect(metricsAfter?.pid).toBe(lgnets[1]!.pid);
    const rx = queue(metricsAfter, 0);
    const tx = queue(metricsAfter, 1);
    for (const q of [rx, tx]) {
      expect(q.running, `queue ${q.index}`).toBe(true);
      expect(q.broken).toBeNull();
      expect(q.queueBroken).toBe(0);
    }
    // The new process's counters start at zero: this is all traffic after the reconnect.
    expect(rx.bytes).toBeGreaterThanOrEqual(SIZE);
    expect(tx.bytes).toBeGreaterThanOrEqual(SIZE);
    expect(rx.interrupts).toBeGreaterThan(0);
    expect(tx.kicks + tx.busyPollHits).toBeGreaterThan(0);
    // The driver negotiated the ring format under test (bit 34, VIRTIO_F_RING_PACKED, from sysfs).
    const features = /^[01]{64}/m.exec(jobResult(outcome, 'cmd')?.output ?? '')?.[0] ?? '';
    expect(features, 'the features line from sysfs').toHaveLength(64);
    expect(features[34]).toBe(ring === 'packed' ? '1' : '0');
    // Split rings resume at QEMU's base (restored from used.idx). Packed: QEMU's base was stale, the
    // ring showed where the dead lgnet stopped, and both queues started there.
    if (ring === 'split') expect(rx.ringBaseRecovered + tx.ringBaseRecovered).toBe(0);
    else {
      expect(rx.ringBaseRecovered).toBe(1);
      expect(tx.ringBaseRecovered).toBe(1);
      expect(log.join('')).toContain("queue resumed where its ring shows");
    }
  });
});

describe('QEMU guest on lgnet: two queue pairs, two vCPUs', () => {
  let r: RunResult;

  beforeAll(async () => {
    r = await runOnLgnet({
      queues: 2,
      vcpus: 2,
      iperf: true,
      guest: {
        // ping on each vCPU (the guest picks the TX queue of the sending CPU), then four TCP flows
        // host→guest, which the multiqueue tap spreads over its queues by flow hash.
        jobs: ['ping', 'cmd', 'iperf3-client-rx'],
        pingCount: 20,
        pingInterval: 0.2,
        cmd: `taskset 1 ping -c 10 -i 0.1 ${HOST} > /tmp/p0 & taskset 2 ping -c 10 -i 0.1 ${HOST} > /tmp/p1; wait; cat /tmp/p0 /tmp/p1`,
        iperfTime: 2,
        iperfArgs: ['-P', '4'],
      },
    });
    console.info(`[e2e] two queue pairs, ${Math.round(r.wallMs)} ms: ${JSON.stringify(r.metrics?.queues.map((q) => ({ q: q.index, role: q.role, frames: q.frames })))}`);
  }, 200_000);

  it('boots with mq and pings the host 20 times with 0% loss', () => {
    expect(r.outcome.ready?.carrier).toBe(1);
    const ping = jobResult(r.outcome, 'ping');
    expect(ping, 'ping result').toBeDefined();
    expect(ping!.received).toBe(20);
    expect(r.lgnetLog).not.toContain('message refused');
    // One vhost device per queue pair: each handshake would repeat a warning.
    expect(backendWarnings(r.outcome.stderr), r.outcome.stderr).toEqual([]);
    expect(r.outcome.ok).toBe(true);
  });

  it("lgnet's metrics show traffic on both queue pairs (RX and TX of each)", () => {
    expect(r.metrics?.queues.filter((q) => q.role !== 'ctrl').length).toBe(4);
    for (const pair of [0, 1]) {
      const rx = queue(r.metrics, 2 * pair);
      const tx = queue(r.metrics, 2 * pair + 1);
      expect(rx.role).toBe('rx');
      expect(tx.role).toBe('tx');
      expect(rx.frames, `pair ${pair} rx`).toBeGreaterThan(0);
      expect(tx.frames, `pair ${pair} tx`).toBeGreaterThan(0);
      expect(rx.broken ?? tx.broken).toBeNull();
    }
  });
});

// A guest with fewer vCPUs than queue pairs uses fewer pairs (Linux: min(vCPUs, pairs)), and QEMU
// disables the rings of the others. The multi-queue tap spreads the host's new flows over its queues
// by hash, so lgnet must detach the queues of the pairs not in use: a flow hashed to one would wait
// there for a reader that never comes (before that fix, about half the host's addresses got no echo).
// lgnet runs here as under a manager that made the tap: its two queues handed over as fds (--tap-fd),
// no capability at all, so the detaching is done on fds lgnet did not open.
describe('QEMU guest on lgnet: two queue pairs offered, one vCPU (the guest uses one pair); lgnet without capabilities on tap fds handed over', () => {
  const SOURCES = Array.from({ length: 16 }, (_, i) => `10.0.2.${100 + i}`);
  const ECHOS = 3;
  let r: RunResult;
  let pings: Array<{ src: string; code: number | null; out: string }> = [];
  let caps = -1n;

  beforeAll(async () => {
    // The guest waits until it has answered every echo (at most 30 s), then lists its queues.
    const waitEchos = guestAwaitEchos(SOURCES.length * ECHOS, 30, 'ls /sys/class/net/eth0/queues');
    r = await runOnLgnet({
      queues: 2,
      vcpus: 1,
      tapFds: true,
      guest: { jobs: ['cmd'], cmd: waitEchos },
      during: async ({ net, lgnet }) => {
        caps = capEff(lgnet.pid);
        for (const ip of SOURCES) net.exec(['ip', 'addr', 'add', `${ip}/24`, 'dev', net.tap]);
        // New flows from the host, one per source address: the tap picks a queue for each by hash.
        pings = await Promise.all(SOURCES.map(async (src) => ({
          src, ...(await run(['ip', 'netns', 'exec', net.ns, 'ping', '-I', src, '-c', String(ECHOS), '-i', '0.2', '-W', '3', GUEST], 30_000)),
        })));
      },
    });
    console.info(`[e2e] two pairs, one vCPU, ${Math.round(r.wallMs)} ms: ${JSON.stringify(r.metrics?.queues.map((q) => ({ q: q.index, role: q.role, frames: q.frames })))}`);
  }, 200_000);

  it('the guest runs one queue pair of the two offered, through an lgnet with no capability', () => {
    expect(caps).toBe(0n);
    expect(r.lgnetLog).toContain('"tap":"lgtap0","queues":2');
    expect(r.outcome.ready?.carrier).toBe(1);
    const queues = (jobResult(r.outcome, 'cmd')?.output ?? '').split(/\s+/).filter((q) => /^(rx|tx)-\d+$/.test(q)).sort();
    expect(queues).toEqual(['rx-0', 'tx-0']);
  });

  it(`the host reaches it from ${SOURCES.length} addresses, every echo answered`, () => {
    const lost = pings.filter((p) => !new RegExp(`${ECHOS} packets transmitted, ${ECHOS} received`).test(p.out));
    expect(lost.map((p) => `${p.src}: ${p.out.split('\n').find((l) => /transmitted/.test(l)) ?? p.out}`)).toEqual([]);
  });

  it('lgnet served pair 0 alone, and nothing broke', () => {
    expect(queue(r.metrics, 0).frames).toBeGreaterThanOrEqual(SOURCES.length * ECHOS);
    expect(queue(r.metrics, 2).frames).toBe(0);
    for (const q of r.metrics!.queues) expect(q.queueBroken, `queue ${q.index}`).toBe(0);
    expect(r.lgnetLog).not.toContain('message refused');
    expect(r.lgnetLog).not.toContain('backend could not');
    expect(r.outcome.ok).toBe(true);
  });
});

describe("QEMU's vhost-user handshake with lgnet: warnings about the back-end", () => {
  /**
   * lgnet (with `serveArgs`) and QEMU on its socket, until QEMU has set the protocol features (it warns
   * about the offer just before): then both are stopped, and QEMU's stderr is returned.
   */
  async function handshakeStderr(serveArgs: string[]): Promise<{ stderr: string; lgnetLog: string }> {
    ensureGuestImage();
    const net = createTapNamespace({ hostCidr: `${HOST}/24` });
    const dir = mkdtempSync(join(tmpdir(), 'lgnet-e2e-'));
    const socket = join(dir, 'lgnet.sock');
    const log: string[] = [];
    let lg: Lgnet | undefined;
    let guest: GuestHandle | undefined;
    try {
      lg = await startLgnet(net.ns, socket, net.tap, log, serveArgs);
      guest = bootGuest({ netns: net.ns, netdev: { type: 'vhost-user', socket, reconnect: 1 }, guest: { ip: `${GUEST}/24`, peer: HOST }, timeoutMs: 60_000 });
      const deadline = Date.now() + 30_000;
      while (!log.join('').includes('"req":"SET_PROTOCOL_FEATURES"')) {
        if (Date.now() > deadline) throw new Error(`QEMU never set the protocol features:\n${log.join('').slice(-5000)}`);
        await new Promise((res) => setTimeout(res, 50));
      }
      await guest.kill();
      return { stderr: (await guest.done).stderr, lgnetLog: log.join('') };
    } finally {
      await guest?.kill();
      await stopLgnet(lg?.child);
      await net.destroy();
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it('lgnet serve as it is: no warning', async () => {
    const { stderr, lgnetLog } = await handshakeStderr([]);
    expect(lgnetLog).toContain('front-end connected');
    expect(backendWarnings(stderr), stderr).toEqual([]);
  }, 90_000);

  it('with --offer-config QEMU warns that it does not support CONFIG (why the flag is off by default)', async () => {
    const { stderr } = await handshakeStderr(['--offer-config']);
    const warnings = backendWarnings(stderr);
    expect(warnings.length, stderr).toBeGreaterThan(0);
    expect(warnings.join('\n')).toContain('VHOST_USER_PROTOCOL_F_CONFIG');
  }, 90_000);
});
