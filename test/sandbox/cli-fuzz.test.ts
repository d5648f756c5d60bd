/**
 * The vhost-user fuzz (vhost-user-fuzz-helpers.ts) against a jailed `lgnet serve` process: every error
 * path a random front-end reaches runs under the seccomp policy, so a system call the policy lacks on
 * some rare path would kill the process (as the denied waitpid once did). After the sequences the
 * process still serves a good front-end, traffic included, holds no more fds than before, and exits 0
 * on SIGTERM.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { mask } from '../../device/features.ts';
import { REPO_ROOT } from '../../scripts/qemu.ts';
import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { createNetns, destroyAllNetns, netnsPrerequisites, type Netns } from '../../harness/netns.ts';
import { FuzzRam, fuzzRuns, fuzzTimeout, message, playSequence, SEQUENCE_TIMEOUT_MS, SequenceTimes, start } from './vhost-user-fuzz-helpers.ts';
import { expectedPayload, udpSink, until } from './vhost-user-helpers.ts';

const pre = netnsPrerequisites();
/** Sequences played, all of them (LGNET_FUZZ_RUNS overrides): 3 s idle, about 30 s on a crowded 2-vCPU machine. */
const RUNS = fuzzRuns(500);
const MAC = '52:54:00:aa:bb:dd';

describe.skipIf(!pre.ok || process.getuid?.() !== 0)('lgnet serve (jailed) under random front-ends', () => {
  let ns: Netns;
  let dir: string;
  let lg: ChildProcess | undefined;
  let exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  let stderr = '';
  let ram: FuzzRam | undefined;

  beforeAll(async () => {
    ns = createNetns('lgfuzz');
    dir = mkdtempSync(join(tmpdir(), 'lgnet-cli-fuzz-'));
    ram = new FuzzRam();
    lg = spawn('ip', ['netns', 'exec', ns.name, join(REPO_ROOT, 'bin/lgnet'), 'serve', '--socket', join(dir, 'lgnet.sock'), '--tap', 'lgtapz', '--mac', MAC, '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'pipe'] });
    lg.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    exited = new Promise((resolve) => lg!.on('exit', (code, signal) => resolve({ code, signal })));
    let out = '';
    lg.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    expect(await until(() => out.includes('lgnet ready'), 20_000), stderr).toBe(true);
    ns.exec('ip', 'addr', 'add', '10.78.0.1/24', 'dev', 'lgtapz');
    ns.exec('ip', 'link', 'set', 'lgtapz', 'up');
  }, 40_000);
  afterAll(() => {
    if (lg?.pid !== undefined && lg.exitCode === null && lg.signalCode === null) process.kill(lg.pid, 'SIGKILL');
    ram?.close();
    destroyAllNetns();
    rmSync(dir, { recursive: true, force: true });
  });

  const fds = (): number => readdirSync(`/proc/${lg!.pid}/fd`).length;

  /** A well-behaved front-end: attach, send one UDP frame, see it arrive in the namespace. */
  async function goodGuest(port: number): Promise<void> {
    const guestRam = new GuestRam(16 << 20);
    const fe = await VhostUserFrontend.connect(join(dir, 'lgnet.sock'));
    const neg = await fe.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') }); // split rings below
    const drv = new VirtioNetDriver(guestRam, { features: neg.features & ~(1n << 30n), queueSize: 64 });
    try {
      await fe.attachDriver(drv, guestRam, { negotiate: false });
      const sink = await udpSink(ns, '10.78.0.1', port, 1, 5000);
      const tapMac = mac(ns.exec('cat', '/sys/class/net/lgtapz/address').trim());
      const payload = expectedPayload(64, port & 0xff);
      expect(drv.send(udpFrame({ srcMac: mac(MAC), dstMac: tapMac, srcIp: ip4('10.78.0.2'), dstIp: ip4('10.78.0.1'), srcPort: 1234, dstPort: port, payload }))).toBe(true);
      expect(await drv.drainTx(0, 5000)).toBe(0);
      expect((await sink.datagrams()).map((d) => d.hex)).toEqual([Buffer.from(payload).toString('hex')]);
    } finally {
      fe.close();
      drv.close();
      guestRam.close();
    }
  }

  it(`${RUNS} random sequences: the jailed process survives every error path, serves on, leaks no fd, exits 0`, async () => {
    await goodGuest(6100);
    await new Promise((r) => setTimeout(r, 200)); // the good connection's teardown
    const before = fds();
    const times = new SequenceTimes();
    // Every one of RUNS sequences is played (no time limit that would end the run early and pass).
    await fc.assert(
      fc.asyncProperty(start, fc.array(message, { minLength: 1, maxLength: 24 }), (st, msgs) => times.time(async () => {
        await playSequence(join(dir, 'lgnet.sock'), ram!, st, msgs);
        expect(lg!.exitCode, stderr).toBeNull();
        expect(lg!.signalCode, stderr).toBeNull();
      })),
      { numRuns: RUNS, timeout: SEQUENCE_TIMEOUT_MS },
    );
    expect(times.count).toBe(RUNS);
    console.log(`[cli-fuzz] ${times.summary()}`);
    await goodGuest(6101);
    expect(await until(() => fds() <= before, 5000), `lgnet holds ${fds()} fds, ${before} before the fuzz`).toBe(true);
    process.kill(lg!.pid!, 'SIGTERM');
    expect(await exited, stderr).toEqual({ code: 0, signal: null });
  }, fuzzTimeout(RUNS, 30_000));
});
