/**
 * `lgnet serve` as a process (bin/lgnet, run inside a test namespace with ip netns exec, so the pid is
 * lgnet's own): exactly one ready line on stdout, JSON logs on stderr, frames served through the tap it
 * created, no fd growth under repeated messages, and on SIGTERM the socket file is removed, nothing is
 * logged at warn or above, and the exit status is 0. The CONFIG protocol feature only with
 * --offer-config. Bad flags exit 2 before anything is opened.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as native from '../../native/index.ts';
import { mask } from '../../device/features.ts';
import { REQ, encodeVringFile, protocolMask } from '../../sandbox/vhost-user/messages.ts';
import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { createNetns, destroyAllNetns, netnsPrerequisites, type Netns } from '../../harness/netns.ts';
import { INFLIGHT, inflightQueueRegionSize } from '../../vring/index.ts';
import { expectedPayload, fdCount, udpSink, until } from './vhost-user-helpers.ts';
import { LGNET, kill, logLines, startLgnet, type Lgnet, type LogLine } from './serve-process.ts';

const pre = netnsPrerequisites();

/** Log lines at warn (pino level 40) or above from the 'stopping' line on: a clean stop has none. */
function stopWarnings(l: Lgnet): LogLine[] {
  const logs = logLines(l);
  const from = logs.findIndex((x) => x.msg === 'stopping');
  expect(from, l.stderr()).toBeGreaterThanOrEqual(0);
  expect(logs.map((x) => x.msg)).toContain('stopped');
  return logs.slice(from).filter((x) => x.level >= 40);
}

/** Waits for `path` to be gone (the socket reaper removes it right after lgnet exits). */
async function gone(path: string): Promise<boolean> {
  for (let i = 0; i < 100 && existsSync(path); i++) await new Promise((r) => setTimeout(r, 20));
  return !existsSync(path);
}

describe('lgnet serve (CLI)', () => {
  it('refuses bad flags with exit status 2 and a message, opening nothing', () => {
    const r = spawnSync(LGNET, ['serve', '--socket', '/tmp/never.sock', '--queues', '0'], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('--queues');
    expect(existsSync('/tmp/never.sock')).toBe(false);
    const m = spawnSync(LGNET, ['serve'], { encoding: 'utf8', timeout: 20_000 });
    expect(m.status).toBe(2);
    expect(m.stderr).toContain('--socket');
    const r2 = spawnSync(LGNET, ['serve', '--socket', '/tmp/never.sock', '--tx-rate-bytes', '1000'], { encoding: 'utf8', timeout: 20_000 });
    expect(r2.status).toBe(2);
    expect(r2.stderr).toContain('--tx-rate-bytes');
    expect(r2.stderr).toContain('SIZE/MS');
    const r3 = spawnSync(LGNET, ['serve', '--socket', '/tmp/never.sock', '--worker-cpus', '1-0'], { encoding: 'utf8', timeout: 20_000 });
    expect(r3.status).toBe(2);
    expect(r3.stderr).toContain('--worker-cpus');
    expect(existsSync('/tmp/never.sock')).toBe(false);
  });
});

describe.skipIf(!pre.ok)('lgnet serve (CLI) in a namespace', () => {
  let ns: Netns;
  let dir: string;
  let lg: Lgnet | undefined;
  /** Every lgnet started here: a test that fails before its own stop must not leave one running. */
  const started: Lgnet[] = [];
  const start = async (args: string[]): Promise<Lgnet> => {
    const l = await startLgnet(ns, args);
    started.push(l);
    return l;
  };

  beforeAll(() => {
    ns = createNetns('lgcli');
    dir = mkdtempSync(join(tmpdir(), 'lgnet-cli-'));
  });
  afterAll(() => {
    for (const l of started) kill(l);
    destroyAllNetns();
    rmSync(dir, { recursive: true, force: true });
  });

  it('prints one ready line, serves frames, leaks no fds, and exits 0 on SIGTERM removing its socket', async () => {
    const socket = join(dir, 'lgnet.sock');
    const pcap = join(dir, 'serve.pcap');
    lg = await start(['--socket', socket, '--tap', 'lgtapc', '--mac', '52:54:00:aa:bb:cc', '--log-level', 'info', '--pcap', pcap, '--offer-config']);
    expect(lg.stdout()).toBe(`lgnet ready socket=${socket} tap=lgtapc queues=1 mode=server\n`);
    expect(existsSync(socket)).toBe(true);
    const pid = lg.child.pid!;
    ns.exec('ip', 'addr', 'add', '10.77.0.1/24', 'dev', 'lgtapc');
    ns.exec('ip', 'link', 'set', 'lgtapc', 'up');
    const tapMac = mac(ns.exec('cat', '/sys/class/net/lgtapc/address').trim());

    const ram = new GuestRam(16 << 20);
    const fe = await VhostUserFrontend.connect(socket);
    try {
      // Split rings: the inflight record below is kept for split rings only.
      const neg = await fe.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') });
      expect(neg.protocolFeatures & protocolMask('CONFIG')).not.toBe(0n); // --offer-config
      const drvFull = new VirtioNetDriver(ram, { features: neg.features & ~(1n << 30n), queueSize: 64 });
      try {
        await fe.attachDriver(drvFull, ram, { negotiate: false });
        expect(Buffer.from(await fe.getConfig(0, 6)).toString('hex')).toBe('525400aabbcc');
        // A frame from the harness guest reaches a UDP socket in the namespace.
        const sink = await udpSink(ns, '10.77.0.1', 6000, 1, 5000);
        const payload = expectedPayload(64, 1);
        drvFull.send(udpFrame({ srcMac: mac('52:54:00:aa:bb:cc'), dstMac: tapMac, srcIp: ip4('10.77.0.2'), dstIp: ip4('10.77.0.1'), srcPort: 1234, dstPort: 6000, payload }));
        expect(await drvFull.drainTx(0, 5000)).toBe(0);
        const got = await sink.datagrams();
        expect(got.map((d) => d.hex)).toEqual([Buffer.from(payload).toString('hex')]);

        // Inflight tracking inside the jail: GET_INFLIGHT_FD makes the buffer (memfd_create), SET maps
        // it (mmap), and the TX ring records into it from then on.
        const inflight = await fe.getInflightFd(2, 64);
        await fe.setInflightFd(inflight.fd, inflight);
        const record = native.mmap(inflight.fd, 0, inflight.mmapSize);
        native.close(inflight.fd);
        try {
          const txRecord = new DataView(native.mappingBuffer(record), inflightQueueRegionSize(64), inflightQueueRegionSize(64));
          const sink2 = await udpSink(ns, '10.77.0.1', 6001, 1, 5000);
          drvFull.send(udpFrame({ srcMac: mac('52:54:00:aa:bb:cc'), dstMac: tapMac, srcIp: ip4('10.77.0.2'), dstIp: ip4('10.77.0.1'), srcPort: 1234, dstPort: 6001, payload }));
          expect(await drvFull.drainTx(0, 5000)).toBe(0);
          expect((await sink2.datagrams()).length).toBe(1);
          expect(await until(() => txRecord.getUint16(INFLIGHT.USED_IDX, true) === 2)).toBe(true);
          expect(txRecord.getUint16(INFLIGHT.VERSION, true)).toBe(1);
        } finally {
          native.munmap(record);
        }

        // Repeated SET_VRING_CALL on a stopped ring: the server's fd count does not grow.
        await fe.getVringBase(1);
        const before = fdCount(pid);
        for (let i = 0; i < 1000; i++) {
          const call = native.eventfdCreate();
          fe.sendRequest(REQ.SET_VRING_CALL, encodeVringFile(1, false), { fds: [call] });
          native.close(call);
          if (i % 100 === 99) await fe.barrier();
        }
        await fe.barrier();
        expect(fdCount(pid) - before).toBeLessThanOrEqual(1);
        // Back to running, then SIGTERM while the front-end is still attached.
        await fe.startRing(ram, 1, drvFull.tx[0]!.setup, 1);
      } finally {
        drvFull.close();
      }
      process.kill(pid, 'SIGTERM');
      const e = await lg.exited;
      expect(e).toEqual({ code: 0, signal: null });
      // The jailed process may not unlink (and does not try); its reaper removes the socket right after
      // it exits. A clean stop, front-end attached and rings running, logs nothing at warn or above.
      expect(await gone(socket)).toBe(true);
      expect(stopWarnings(lg)).toEqual([]);
      expect(await fe.waitClosed(2000)).toBe(true);
      expect(lg.stdout().split('\n').filter(Boolean)).toHaveLength(1);
      expect(logLines(lg).map((l) => l.msg)).toContain('jailed'); // the sandbox is on by default
      // --pcap: the jailed workers appended every frame; tcpdump reads the file.
      const dump = spawnSync('tcpdump', ['-r', pcap, '-nn', 'udp'], { encoding: 'utf8' });
      expect(dump.status, dump.stderr).toBe(0);
      expect(dump.stdout).toMatch(/10\.77\.0\.2\.1234 > 10\.77\.0\.1\.6000: UDP, length 64/);
      expect(dump.stdout).toMatch(/10\.77\.0\.2\.1234 > 10\.77\.0\.1\.6001: UDP, length 64/);
    } finally {
      fe.close();
      ram.close();
    }
  }, 60_000);

  it('client mode: ready at once, connects when the VMM listens, exits 0 on SIGINT', async () => {
    const socket = join(dir, 'vmm.sock');
    lg = await start(['--socket', socket, '--client', '--reconnect-ms', '100', '--tap', 'lgtapd', '--log-level', 'warn']);
    expect(lg.stdout()).toBe(`lgnet ready socket=${socket} tap=lgtapd queues=1 mode=client\n`);
    const listener = VhostUserFrontend.listen(socket);
    try {
      const fe = await listener.accept(5000);
      const neg = await fe.negotiate();
      expect(neg.offered & (1n << 30n)).not.toBe(0n);
      // Without --offer-config no CONFIG (QEMU's virtio-net warns when a net back-end offers it), and
      // GET_CONFIG is refused with the spec's empty reply.
      expect(neg.protocolOffered & protocolMask('CONFIG')).toBe(0n);
      expect(neg.protocolOffered & protocolMask('MQ', 'REPLY_ACK')).toBe(protocolMask('MQ', 'REPLY_ACK'));
      await expect(fe.getConfig(0, 6)).rejects.toMatchObject({ code: 'FRONTEND_NACK' });
      fe.close();
    } finally {
      listener.close();
    }
    process.kill(lg.child.pid!, 'SIGINT');
    expect(await lg.exited).toEqual({ code: 0, signal: null });
  }, 60_000);
  it('is jailed by default (NoNewPrivs, seccomp on every thread); --no-sandbox says so loudly and is not', async () => {
    const status = (pid: number) => {
      const tasks = spawnSync('ls', [`/proc/${pid}/task`], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
      return tasks.map((t) => spawnSync('cat', [`/proc/${pid}/task/${t}/status`], { encoding: 'utf8' }).stdout);
    };
    // The socket reaper is the one child lgnet vouches for, and the only one it has once jailed.
    // --worker-cpus: the workers pin themselves as they start, before the jail.
    const cpu = native.threadAffinity().at(-1)!;
    lg = await start(['--socket', join(dir, 'jailed.sock'), '--tap', 'lgtapj', '--log-level', 'info', '--rx-rate-bytes', '125000000/1000', '--tx-rate-ops', '100000/1000', '--worker-cpus', String(cpu)]);
    const jailed = status(lg.child.pid!);
    const workers = jailed.filter((st) => /^Name:\s+lgnet-(rx0|tx1)$/m.test(st));
    expect(workers).toHaveLength(2);
    for (const st of workers) expect(st).toMatch(new RegExp(`^Cpus_allowed_list:\\s+${cpu}$`, 'm'));
    const jailLog = logLines(lg).find((l) => l.msg === 'jailed') as { jail?: { sandboxed: boolean } } | undefined;
    expect(jailLog?.jail?.sandboxed, lg.stderr()).toBe(true);
    const kids = spawnSync('sh', ['-c', `cat /proc/${lg.child.pid}/task/*/children`], { encoding: 'utf8' }).stdout.split(/\s+/).filter(Boolean);
    const running = kids.filter((k) => !/\) [ZX] /.test(spawnSync('cat', [`/proc/${k}/stat`], { encoding: 'utf8' }).stdout));
    expect(running.map((k) => spawnSync('cat', [`/proc/${k}/cmdline`], { encoding: 'utf8' }).stdout.split('\0')[1])).toEqual(['-e']);
    expect(jailed.length).toBeGreaterThan(3); // main, queue workers, libuv and V8 threads
    for (const st of jailed) {
      expect(st).toMatch(/NoNewPrivs:\s+1/);
      expect(st).toMatch(/Seccomp:\s+2/);
    }
    // Queue workers carry a second, narrower filter.
    expect(jailed.filter((st) => /Seccomp_filters:\s+2/.test(st)).length).toBe(2);
    process.kill(lg.child.pid!, 'SIGTERM');
    expect(await lg.exited).toEqual({ code: 0, signal: null });
    // A clean stop: no warning (the jailed server leaves the socket file to its reaper), file gone.
    expect(stopWarnings(lg)).toEqual([]);
    expect(await gone(join(dir, 'jailed.sock'))).toBe(true);

    lg = await start(['--socket', join(dir, 'free.sock'), '--tap', 'lgtapf', '--no-sandbox', '--log-level', 'info']);
    expect(status(lg.child.pid!).every((st) => /Seccomp:\s+0/.test(st))).toBe(true);
    expect(lg.stderr()).toContain('LGNET_NO_SANDBOX');
    process.kill(lg.child.pid!, 'SIGTERM');
    expect(await lg.exited).toEqual({ code: 0, signal: null });
    // Not jailed, the server removes its socket file itself, quietly.
    expect(stopWarnings(lg)).toEqual([]);
    expect(await gone(join(dir, 'free.sock'))).toBe(true);
  }, 60_000);

  it('--print-policy prints every allowed syscall with its reason and exits 0', () => {
    const r = spawnSync(LGNET, ['serve', '--print-policy'], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/\[main\] \d+ syscalls/);
    expect(r.stdout).toMatch(/\[worker\] \d+ syscalls/);
    expect(r.stdout).toMatch(/writev\s+\S/);
    expect(r.stdout).not.toMatch(/^\s+\d+ execve /m);
  });
});
