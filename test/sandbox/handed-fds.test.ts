/**
 * `lgnet serve --socket-fd --tap-fd`: a manager makes the vhost-user socket and the tap and hands lgnet
 * their fds (as systemd hands a listening socket, and libvirt hands QEMU `-netdev tap,fds=`), so that
 * lgnet runs with no capability at all. Here lgnet runs under `setpriv --bounding-set -all` (uid 0
 * with an empty capability set: CapEff 0, checked), jailed as always, on a listening socket and the
 * two queues of a multi-queue tap this test made. The host's 64 flows reach the harness guest over
 * both pairs, its frames reach the host, a pair the front-end disables is detached (TUNSETQUEUE on an
 * fd lgnet did not open), a second front-end is served on the same socket, and at exit the socket
 * file stays, its maker's. The same lgnet asked to open a tap itself cannot. Fds that are not a
 * usable tap or listening socket are refused before anything is served.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mask } from '../../device/features.ts';
import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { createNetns, destroyAllNetns, netnsPrerequisites, openTapIn, type Netns } from '../../harness/netns.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import * as native from '../../native/index.ts';
import { capEff, NO_CAPS } from '../helpers/caps.ts';
import { FLOWS, sprayFlows } from '../helpers/flows.ts';
import { LGNET, kill, logLines, startLgnet, type Lgnet } from './serve-process.ts';
import { expectedPayload, udpSink } from './vhost-user-helpers.ts';

const pre = netnsPrerequisites();

/** lgnet's log line that says why it could not start, from a run's stderr. */
function startFailure(stderr: string): Record<string, unknown> | undefined {
  return stderr.split('\n').filter(Boolean).map((x) => JSON.parse(x) as Record<string, unknown>).find((x) => x['msg'] === 'lgnet serve could not start');
}

/** Runs `lgnet serve ARGS` (with `fds` as 3, 4, …) to its end: for the runs that must not start. */
function runToEnd(ns: Netns, args: string[], fds: number[] = []): Promise<{ code: number | null; stderr: string; stdout: string }> {
  const child = spawn('ip', ['netns', 'exec', ns.name, ...NO_CAPS, LGNET, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe', ...fds] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const t = setTimeout(() => child.kill('SIGKILL'), 20_000);
  return new Promise((resolve) => child.on('exit', (code) => {
    clearTimeout(t);
    resolve({ code, stderr, stdout });
  }));
}

describe.skipIf(!pre.ok)('lgnet serve --tap-fd: a tap made by the caller, lgnet without capabilities', () => {
  let ns: Netns;
  let dir: string;
  let lg: Lgnet | undefined;
  beforeAll(() => {
    ns = createNetns('lgtapfd');
    dir = mkdtempSync(join(tmpdir(), 'lgnet-tapfd-'));
  });
  afterAll(() => {
    kill(lg);
    destroyAllNetns();
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves a listening socket handed over as fd 3 and both queues of a multi-queue tap as fds 4 and 5, steers off a pair the front-end disables, and leaves the socket to its maker', async () => {
    const q0 = openTapIn(ns, { name: 'lgtapfd0', vnetHdr: true, multiQueue: true, address: '10.79.0.1/24' });
    const q1 = ns.track(native.withNetns(ns.path, () => native.tapOpen({ name: 'lgtapfd0', vnetHdr: true, multiQueue: true }).fd));
    const socket = join(dir, 'lgnet.sock');
    const listening = ns.track(native.unixListen(socket));
    lg = await startLgnet(ns, ['--socket-fd', '3', '--tap-fd', '4,5', '--log-level', 'info'], {}, { fds: [listening, q0.fd, q1], wrap: NO_CAPS });
    expect(lg.stdout()).toBe(`lgnet ready socket=${socket} tap=lgtapfd0 queues=2 mode=server\n`);
    expect(capEff(lg.child.pid!)).toBe(0n);
    // The test's own copies go: from here the tap's queues are lgnet's alone.
    ns.untrack(q0.fd);
    native.close(q0.fd);
    ns.untrack(q1);
    native.close(q1);
    const jail = logLines(lg).find((x) => x.msg === 'jailed');
    expect(jail?.['jail']).toMatchObject({ sandboxed: true });
    // uid 0 without --user: the jail's warning says that no capability came with it.
    expect(logLines(lg).find((x) => x['code'] === 'LGNET_JAIL_ROOT')?.msg).toContain('no capabilities');

    const guestMac = '52:54:00:00:79:02';
    ns.exec('ip', 'neigh', 'add', '10.79.0.2', 'lladdr', guestMac, 'dev', 'lgtapfd0');
    const tapMac = mac(ns.exec('cat', '/sys/class/net/lgtapfd0/address').trim());
    const ram = new GuestRam(48 << 20);
    const fe = await VhostUserFrontend.connect(socket);
    try {
      const neg = await fe.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') });
      const drv = new VirtioNetDriver(ram, { features: neg.features, pairs: 2, queueSize: 256 });
      try {
        await fe.attachDriver(drv, ram, { negotiate: false });
        for (const p of [0, 1]) drv.fillRx(p);
        // Host → guest over both queues of the tap.
        const both = await sprayFlows(ns, '10.79.0.2', drv, 2);
        expect(both[0]! + both[1]!).toBe(FLOWS);
        expect(both[0], `${both}`).toBeGreaterThan(0);
        expect(both[1], `${both}`).toBeGreaterThan(0);
        // Guest → host on each pair.
        const sink = await udpSink(ns, '10.79.0.1', 7501, 2, 5000);
        for (const pair of [0, 1]) {
          drv.send(udpFrame({ srcMac: mac(guestMac), dstMac: tapMac, srcIp: ip4('10.79.0.2'), dstIp: ip4('10.79.0.1'), srcPort: 6000 + pair, dstPort: 7501, payload: expectedPayload(80, pair) }), { pair, kick: true });
        }
        expect((await sink.datagrams()).length).toBe(2);
        // Pair 1 disabled: lgnet detaches its tap queue, on an fd it did not open, without CAP_NET_ADMIN.
        await fe.setVringEnable(2, false);
        await fe.setVringEnable(3, false);
        expect(await sprayFlows(ns, '10.79.0.2', drv, 2)).toEqual([FLOWS, 0]);
      } finally {
        drv.close();
      }
    } finally {
      fe.close();
      ram.close();
    }
    // The next front-end is accepted on the same socket.
    const fe2 = await VhostUserFrontend.connect(socket);
    try {
      expect((await fe2.negotiate()).features & mask('MQ')).not.toBe(0n);
    } finally {
      fe2.close();
    }
    process.kill(lg.child.pid!, 'SIGTERM');
    expect((await lg.exited).code).toBe(0);
    // The socket is its maker's: the file stays, and the maker's copy still takes connections.
    expect(statSync(socket).isSocket()).toBe(true);
    native.close(native.unixConnect(socket));
    const warnings = logLines(lg).filter((x) => x.level >= 40 && x['code'] !== 'LGNET_JAIL_ROOT');
    expect(warnings, lg.stderr()).toEqual([]);
    lg = undefined;
  });

  it('without its fds, the same lgnet cannot make a tap (no CAP_NET_ADMIN): the handed-over fds are what let it serve', async () => {
    const r = await runToEnd(ns, ['--socket', join(dir, 'never.sock'), '--tap', 'lgtapfdx']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    const line = startFailure(r.stderr);
    expect(String(line?.['err']), r.stderr).toMatch(/TUNSETIFF.*EPERM/);
  });

  it('refuses fds that are not one vnet-header tap (NET_BAD_TAP_FD) or a listening unix socket (VU_BAD_LISTEN_FD) with exit 1, and flags that do not fit with exit 2', async () => {
    const efd = ns.track(native.eventfdCreate({ nonblocking: false }));
    const plain = openTapIn(ns, { name: 'lgtapfdp', vnetHdr: false, address: false });
    for (const [fd, why] of [[efd, /not a tun fd/], [plain.fd, /lacks IFF_VNET_HDR/]] as const) {
      const r = await runToEnd(ns, ['--socket', join(dir, 'never.sock'), '--tap-fd', '3'], [fd]);
      expect(r.code, r.stderr).toBe(1);
      const line = startFailure(r.stderr);
      expect(line?.['code'], r.stderr).toBe('NET_BAD_TAP_FD');
      expect(String(line?.['err'])).toMatch(why);
    }
    // A socket that does not listen, and a file that is no socket, as --socket-fd.
    const [a, b] = native.unixSocketpair();
    ns.track(a);
    ns.track(b);
    const file = ns.track(openSync(join(dir, 'not-a-socket'), 'w'));
    const tap = openTapIn(ns, { name: 'lgtapfdq', vnetHdr: true, address: false });
    for (const [fd, why] of [[a, /AF_UNIX stream socket that does not listen/], [file, /is not a socket \(ENOTSOCK\)/]] as const) {
      const r = await runToEnd(ns, ['--socket-fd', '3', '--tap-fd', '4'], [fd, tap.fd]);
      expect(r.code, r.stderr).toBe(1);
      const line = startFailure(r.stderr);
      expect(line?.['code'], r.stderr).toBe('VU_BAD_LISTEN_FD');
      expect(String(line?.['err'])).toMatch(why);
    }
    const both = await runToEnd(ns, ['--socket-fd', '3', '--socket', join(dir, 'x.sock')]);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('--socket-fd');
    const mismatch = await runToEnd(ns, ['--socket', join(dir, 'never.sock'), '--tap-fd', '3,4', '--queues', '1'], [plain.fd, efd]);
    expect(mismatch.code).toBe(2);
    expect(mismatch.stderr).toContain('one fd per queue pair');
    const stdio = await runToEnd(ns, ['--socket', join(dir, 'never.sock'), '--tap-fd', '1']);
    expect(stdio.code).toBe(2);
    expect(stdio.stderr).toContain('--tap-fd');
  });
});
