/**
 * The big one: a real Linux guest under QEMU 7.2, its kernel virtio-net driver talking to lgnet over
 * vhost-user. `lgnet serve --tap lgtap0` runs inside the test namespace (ip netns exec) and attaches
 * to the tap createTapNamespace made; QEMU connects to lgnet's socket (client, with reconnect); the
 * guest pings the host side of the tap 20 times. Everything is killed by pid and removed afterwards.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootGuest, ensureGuestImage, REPO_ROOT, type GuestHandle, type GuestOutcome } from '../../scripts/qemu.ts';
import { createTapNamespace, type TapNamespace } from '../../scripts/netns.ts';

const HOST = '10.0.2.1';
const GUEST = '10.0.2.2';

/** Starts `lgnet serve` in the namespace; resolves once it printed its ready line. */
function startLgnet(ns: string, socket: string, tap: string, log: string[], extra: string[] = []): Promise<ChildProcess> {
  const child = spawn('ip', ['netns', 'exec', ns, join(REPO_ROOT, 'bin/lgnet'), 'serve', '--socket', socket, '--tap', tap, '--log-level', 'debug', ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => log.push(d));
  return new Promise((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => reject(new Error(`lgnet did not get ready: ${out}\n${log.join('')}`)), 20_000);
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      out += d;
      if (out.includes('lgnet ready')) {
        clearTimeout(t);
        resolve(child);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`lgnet exited (${code}) before ready: ${log.join('')}`));
    });
  });
}

function stop(child: ChildProcess | undefined): Promise<number | null> {
  if (!child || child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return Promise.resolve(child?.exitCode ?? null);
  return new Promise((resolve) => {
    const k = setTimeout(() => child.pid !== undefined && process.kill(child.pid, 'SIGKILL'), 10_000);
    child.once('exit', (code) => {
      clearTimeout(k);
      resolve(code);
    });
    process.kill(child.pid!, 'SIGTERM');
  });
}

describe('QEMU guest on lgnet (vhost-user)', () => {
  let net: TapNamespace | undefined;
  let guest: GuestHandle | undefined;
  let lgnet: ChildProcess | undefined;
  let dir: string | undefined;
  let outcome: GuestOutcome;
  const lgnetLog: string[] = [];
  let lgnetExit: number | null = null;

  beforeAll(async () => {
    ensureGuestImage();
    net = createTapNamespace({ hostCidr: `${HOST}/24` });
    dir = mkdtempSync(join(tmpdir(), 'lgnet-e2e-'));
    const socket = join(dir, 'lgnet.sock');
    lgnet = await startLgnet(net.ns, socket, net.tap, lgnetLog);
    guest = bootGuest({
      netns: net.ns,
      netdev: { type: 'vhost-user', socket, reconnect: 1 },
      guest: { ip: `${GUEST}/24`, peer: HOST, jobs: ['ping'], pingCount: 20, pingInterval: 0.2 },
      timeoutMs: 120_000,
    });
    outcome = await guest.done;
    if (!outcome.ok) {
      console.error(`guest failed: ${JSON.stringify({ ...outcome, serial: undefined, results: outcome.results })}\n${outcome.serial}\n${outcome.stderr}\n--- lgnet ---\n${lgnetLog.join('').slice(-20_000)}`);
    }
    lgnetExit = await stop(lgnet);
  }, 200_000);

  afterAll(async () => {
    await guest?.kill();
    await stop(lgnet);
    await net?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  it('boots with the link up on lgnet and powers off cleanly', () => {
    expect(outcome.timedOut).toBe(false);
    expect(outcome.ready?.carrier).toBe(1);
    expect(outcome.ready?.ip).toBe(`${GUEST}/24`);
    expect(outcome.ok).toBe(true);
  });

  it('pings the host 20 times with 0% loss', () => {
    const ping = outcome.results.find((r) => r.job === 'ping');
    expect(ping, 'ping result').toBeDefined();
    expect(ping!.rc).toBe(0);
    expect(ping!.transmitted).toBe(20);
    expect(ping!.received).toBe(20);
  });

  it('lgnet served the connection without refusing a message, and exited 0 on SIGTERM', () => {
    const text = lgnetLog.join('');
    expect(text).toContain('front-end connected');
    expect(text).not.toContain('message refused');
    expect(lgnetExit).toBe(0);
  });
});

describe('QEMU guest on lgnet: the back-end restarts under a running guest', () => {
  let net: TapNamespace | undefined;
  let guest: GuestHandle | undefined;
  const lgnets: ChildProcess[] = [];
  let dir: string | undefined;
  let outcome: GuestOutcome;
  const log: string[] = [];

  beforeAll(async () => {
    ensureGuestImage();
    net = createTapNamespace({ hostCidr: `${HOST}/24` });
    dir = mkdtempSync(join(tmpdir(), 'lgnet-e2e-'));
    const socket = join(dir, 'lgnet.sock');
    lgnets.push(await startLgnet(net.ns, socket, net.tap, log));
    guest = bootGuest({
      netns: net.ns,
      netdev: { type: 'vhost-user', socket, reconnect: 1 },
      guest: { ip: `${GUEST}/24`, peer: HOST, jobs: ['ping'], pingCount: 60, pingInterval: 0.2 },
      timeoutMs: 120_000,
    });
    await guest.ready;
    await new Promise((r) => setTimeout(r, 2000)); // pings are flowing through the first lgnet
    expect(await stop(lgnets[0])).toBe(0);
    lgnets.push(await startLgnet(net.ns, socket, net.tap, log)); // QEMU reconnects within ~1 s
    outcome = await guest.done;
    if (!outcome.results.some((r) => r.job === 'ping')) {
      console.error(`guest: ${JSON.stringify({ ...outcome, serial: undefined })}\n${outcome.serial}\n--- lgnet ---\n${log.join('').slice(-20_000)}`);
    }
  }, 200_000);

  afterAll(async () => {
    await guest?.kill();
    for (const l of lgnets) await stop(l);
    await net?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  it('QEMU reconnects to the new lgnet and the guest keeps pinging through it', () => {
    const ping = outcome.results.find((r) => r.job === 'ping');
    expect(ping, 'ping result').toBeDefined();
    expect(ping!.transmitted).toBe(60);
    console.info(`ping across the lgnet restart: ${ping!.received}/60 replies`);
    // ~10 pings go through the first lgnet; the restart costs a few seconds; the rest go through the second.
    expect(ping!.received).toBeGreaterThanOrEqual(35);
    expect(log.join('').match(/front-end connected/g)?.length).toBe(2);
  });
});

describe('QEMU guest on lgnet: two queue pairs', () => {
  let net: TapNamespace | undefined;
  let guest: GuestHandle | undefined;
  let lgnet: ChildProcess | undefined;
  let dir: string | undefined;
  let outcome: GuestOutcome;
  const log: string[] = [];

  beforeAll(async () => {
    ensureGuestImage();
    net = createTapNamespace({ hostCidr: `${HOST}/24`, multiQueue: true });
    dir = mkdtempSync(join(tmpdir(), 'lgnet-e2e-'));
    const socket = join(dir, 'lgnet.sock');
    lgnet = await startLgnet(net.ns, socket, net.tap, log, ['--queues', '2']);
    guest = bootGuest({
      netns: net.ns,
      netdev: { type: 'vhost-user', socket, reconnect: 1, queues: 2 },
      vcpus: 2,
      guest: { ip: `${GUEST}/24`, peer: HOST, jobs: ['ping'], pingCount: 20, pingInterval: 0.2 },
      timeoutMs: 120_000,
    });
    outcome = await guest.done;
    if (!outcome.ok) {
      console.error(`guest failed: ${JSON.stringify({ ...outcome, serial: undefined })}\n${outcome.serial}\n${outcome.stderr}\n--- lgnet ---\n${log.join('').slice(-20_000)}`);
    }
  }, 200_000);

  afterAll(async () => {
    await guest?.kill();
    await stop(lgnet);
    await net?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  it('boots with mq and pings the host 20 times with 0% loss', () => {
    expect(outcome.ready?.carrier).toBe(1);
    const ping = outcome.results.find((r) => r.job === 'ping');
    expect(ping, 'ping result').toBeDefined();
    expect(ping!.received).toBe(20);
    expect(log.join('')).not.toContain('message refused');
  });
});
