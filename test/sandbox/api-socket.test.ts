/**
 * The control socket (sandbox/api.ts): the merge patch of the limits on its own, then a real `lgnet
 * serve`, jailed, with --api-socket and a harness front-end on a real tap. Limits changed through the
 * socket (the `lgnet rate-limit` command, and raw PATCH requests) take effect on the running queues,
 * both ways: a TX limit taken off stops the throttling, an RX limit put on starts it. Hostile peers
 * (not HTTP, bodies too large, bad patches, unknown paths and methods, more connections than it
 * takes) get an error with a code, change nothing, and lgnet goes on serving the socket and the
 * guest. The socket file is 0600: another user cannot connect to it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mask } from '../../device/features.ts';
import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { createNetns, destroyAllNetns, netnsPrerequisites, type Netns } from '../../harness/netns.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { API_ERROR, ApiError, applyRateLimitPatch, MAX_BODY, parseApiSocket } from '../../sandbox/api.ts';
import { MAX_CONNECTIONS } from '../../sandbox/http-listen.ts';
import { apiRequest, formatRateLimits } from '../../sandbox/rate-limit-cmd.ts';
import { sprayUdp } from '../helpers/flows.ts';
import { httpGet, parseExposition } from './metrics-helpers.ts';
import { alive, kill, LGNET, logLines, startLgnet, type Lgnet } from './serve-process.ts';
import { expectedPayload, udpSink, until } from './vhost-user-helpers.ts';

const pre = netnsPrerequisites();

describe('a merge patch of the rate limits', () => {
  const one = { size: 10, refillMs: 500 };
  const gbit = { size: 125_000_000, refillMs: 1000 };

  it('merges a bucket into a direction, keeps what it leaves out, and takes off what it gives as null', () => {
    const cur = { tx: { ops: one } };
    expect(applyRateLimitPatch(cur, '{"tx": {"bytes": {"size": 125000000, "refillMs": 1000}}}')).toEqual({
      after: { rx: null, tx: { ops: one, bytes: gbit } },
      change: { tx: { ops: one, bytes: gbit } },
    });
    expect(applyRateLimitPatch(cur, '{"tx": {"ops": {"size": 20}}}').after.tx).toEqual({ ops: { size: 20, refillMs: 500 } });
    // The last bucket taken off: the direction is unlimited (null), as is a direction given as null.
    expect(applyRateLimitPatch(cur, '{"tx": {"ops": null}}')).toEqual({ after: { rx: null, tx: null }, change: { tx: null } });
    expect(applyRateLimitPatch({ rx: { bytes: gbit }, tx: { ops: one } }, '{"rx": null}')).toEqual({ after: { rx: null, tx: { ops: one } }, change: { rx: null } });
    expect(applyRateLimitPatch(cur, '{}')).toEqual({ after: { rx: null, tx: { ops: one } }, change: {} });
  });

  it('refuses, with a code and without changing anything, what is not a patch of the limits', () => {
    const cur = { tx: { ops: one } };
    const snapshot = JSON.stringify(cur);
    const cases: Array<[string, string, RegExp]> = [
      ['{"tx":', API_ERROR.BAD_REQUEST, /not JSON/],
      ['[1]', API_ERROR.BAD_REQUEST, /JSON object with rx and\/or tx/],
      ['"tx"', API_ERROR.BAD_REQUEST, /JSON object/],
      ['{"tx": 5}', API_ERROR.BAD_REQUEST, /tx must be an object of buckets, or null/],
      ['{"TX": null}', API_ERROR.BAD_REQUEST, /unknown key "TX"; it takes rx, tx/],
      ['{"tx": {"byts": {"size": 1, "refillMs": 1}}}', API_ERROR.BAD_REQUEST, /tx: unknown key "byts"; it takes bytes, ops/],
      ['{"tx": {"ops": []}}', API_ERROR.BAD_REQUEST, /tx.ops must be an object/],
      ['{"tx": {"ops": {"size": "10"}}}', API_ERROR.BAD_REQUEST, /tx.ops.size must be a number/],
      ['{"tx": {"ops": {"size": 1, "burst": 5}}}', API_ERROR.BAD_REQUEST, /unknown key "burst"/],
      ['{"rx": {"bytes": {"size": 100}}}', API_ERROR.BAD_REQUEST, /rx.bytes is a new bucket: give both size and refillMs/],
      ['{"tx": {"ops": {"size": 0}}}', API_ERROR.BAD_RATE_LIMIT, /tx: ops bucket size 0 must be a positive integer/],
      ['{"tx": {"ops": {"size": 1.5}}}', API_ERROR.BAD_RATE_LIMIT, /must be a positive integer/],
      ['{"rx": {"bytes": {"size": 1, "refillMs": 3600001}}}', API_ERROR.BAD_RATE_LIMIT, /refill time 3600001 ms/],
      // A valid rx with a bad tx: nothing applies.
      ['{"rx": {"bytes": {"size": 1, "refillMs": 1}}, "tx": {"ops": {"refillMs": -1}}}', API_ERROR.BAD_RATE_LIMIT, /tx: ops refill time -1/],
    ];
    for (const [body, code, why] of cases) {
      let err: unknown;
      try {
        applyRateLimitPatch(cur, body);
      } catch (e) {
        err = e;
      }
      expect(err, body).toBeInstanceOf(ApiError);
      expect((err as ApiError).code, body).toBe(code);
      expect((err as ApiError).message, body).toMatch(why);
      expect(JSON.stringify(cur)).toBe(snapshot);
    }
  });

  it('takes a unix socket path, and nothing that looks like a network address', () => {
    expect(parseApiSocket('/run/lgnet/api.sock')).toBe('/run/lgnet/api.sock');
    for (const bad of ['', '127.0.0.1:8080', '[::1]:80', 'localhost:9', `/tmp/${'x'.repeat(120)}`, 'a\0b']) {
      expect(() => parseApiSocket(bad), bad).toThrow(expect.objectContaining({ code: API_ERROR.BAD_ADDRESS }));
    }
  });

  it('prints the limits a line a direction, with the rate they make', () => {
    expect(formatRateLimits({ rx: null, tx: { bytes: gbit, ops: { size: 5, refillMs: 1 } } })).toBe(
      'rx: unlimited\ntx: bytes 125000000/1000 ms (1 Gbit/s), frames 5/1 ms (5000 frames/s)\n',
    );
  });
});

describe.skipIf(!pre.ok)('lgnet serve --api-socket: rate limits changed while a front-end runs traffic', () => {
  const TAP = 'lgapi0';
  const HOST_IP = '10.81.0.1';
  const GUEST_IP = '10.81.0.2';
  const GUEST_MAC = '52:54:00:00:81:02';
  let ns: Netns;
  let dir: string;
  let lg: Lgnet | undefined;
  let api: string;
  let metrics: string;
  let ram: GuestRam;
  let fe: VhostUserFrontend;
  let drv: VirtioNetDriver;
  let tapMac: Uint8Array;

  beforeAll(async () => {
    ns = createNetns('lgapi');
    // Traversable by every user, so that the socket's own mode is what keeps another user out.
    dir = mkdtempSync(join(tmpdir(), 'lgnet-api-'));
    chmodSync(dir, 0o755);
    api = join(dir, 'api.sock');
    metrics = join(dir, 'metrics.sock');
    lg = await startLgnet(ns, ['--socket', join(dir, 'vu.sock'), '--tap', TAP, '--api-socket', api, '--metrics-listen', metrics, '--tx-rate-ops', '10/500', '--log-level', 'info', '--user', 'nobody', '--group', 'nogroup']);
    ns.exec('ip', 'addr', 'add', `${HOST_IP}/24`, 'dev', TAP);
    ns.exec('ip', 'link', 'set', TAP, 'up');
    ns.exec('ip', 'neigh', 'replace', GUEST_IP, 'lladdr', GUEST_MAC, 'dev', TAP, 'nud', 'permanent');
    tapMac = mac(ns.exec('cat', `/sys/class/net/${TAP}/address`).trim());
    ram = new GuestRam(32 << 20);
    fe = await VhostUserFrontend.connect(join(dir, 'vu.sock'));
    const neg = await fe.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') });
    drv = new VirtioNetDriver(ram, { features: neg.features, queueSize: 256 });
    await fe.attachDriver(drv, ram, { negotiate: false });
  });
  afterAll(() => {
    drv?.close();
    fe?.close();
    ram?.close();
    kill(lg);
    destroyAllNetns();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Times queue `q` (0 RX, 1 TX) paused for its rate limit, from the Prometheus endpoint. */
  const throttled = async (q: number): Promise<number> => {
    const r = await httpGet({ kind: 'unix', path: metrics }, '/metrics');
    return parseExposition(r.body).find((x) => x.name === 'lgnet_queue_throttled_total' && x.labels['queue'] === String(q))?.value ?? NaN;
  };

  /** The lgnet_rate_limit_* series the Prometheus endpoint serves, as 'direction/bucket rate size'. */
  const limitSeries = async (): Promise<string[]> => {
    const samples = parseExposition((await httpGet({ kind: 'unix', path: metrics }, '/metrics')).body);
    return samples.filter((x) => x.name === 'lgnet_rate_limit_tokens_per_second').map((x) => {
      const size = samples.find((y) => y.name === 'lgnet_rate_limit_bucket_size' && y.labels['direction'] === x.labels['direction'] && y.labels['bucket'] === x.labels['bucket']);
      return `${x.labels['direction']}/${x.labels['bucket']} ${x.value} ${size?.value}`;
    });
  };

  /** The lgnet_api_* series, as 'name{label}' → value ('lgnet_api_requests_total{400}', 'lgnet_api_refusals_total{LGNET_API_TOO_LARGE}', 'lgnet_api_rate_limit_changes_total{}'). */
  const apiSeries = async (): Promise<Record<string, number>> => Object.fromEntries(
    parseExposition((await httpGet({ kind: 'unix', path: metrics }, '/metrics')).body)
      .filter((x) => x.name.startsWith('lgnet_api_'))
      .map((x) => [`${x.name}{${x.labels['code'] ?? x.labels['error'] ?? ''}}`, x.value]),
  );
  /** How much each series grew from `before` to `after` (series that did not grow left out). */
  const grew = (before: Record<string, number>, after: Record<string, number>): Record<string, number> =>
    Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)]).filter(([, d]) => d !== 0));

  /** Sends `n` datagrams guest → host; resolves with how long the TX ring took to drain (ms). */
  const sendTx = async (n: number, port: number): Promise<number> => {
    const sink = await udpSink(ns, HOST_IP, port, n, 15_000);
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      expect(drv.send(udpFrame({ srcMac: mac(GUEST_MAC), dstMac: tapMac, srcIp: ip4(GUEST_IP), dstIp: ip4(HOST_IP), srcPort: 6200, dstPort: port, payload: expectedPayload(64, i) }))).toBe(true);
    }
    expect(await drv.drainTx(0, 10_000)).toBe(0);
    const ms = performance.now() - t0;
    expect((await sink.datagrams()).length).toBe(n);
    return ms;
  };

  /** The lgnet binary's rate-limit command, as an operator runs it. */
  const cli = (...args: string[]) => spawnSync(LGNET, ['rate-limit', api, ...args], { encoding: 'utf8', timeout: 20_000 });

  it('is a 0600 socket that another user cannot connect to', () => {
    expect(lg!.stdout()).toContain(` api=${api}`);
    expect(statSync(api).mode & 0o777).toBe(0o600);
    const probe = `require('net').createConnection(${JSON.stringify(api)}).on('connect', () => { console.log('connected'); process.exit(0); }).on('error', (e) => { console.log(e.code); process.exit(3); })`;
    const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', probe], { encoding: 'utf8', timeout: 10_000 });
    expect(r.stdout.trim(), r.stderr).toBe('EACCES');
    expect(r.status).toBe(3);
  });

  it('shows the limits lgnet started with, and a TX limit taken off stops the throttling of the running queue', async () => {
    const shown = cli();
    expect(shown.status, shown.stderr).toBe(0);
    expect(shown.stdout).toBe('rx: unlimited\ntx: bytes unlimited, frames 10/500 ms (20 frames/s)\n');
    expect(await limitSeries()).toEqual(['tx/ops 20 10']);
    // Limited: 10 at once, then 20 more at 20 frames/s.
    const before = await throttled(1);
    expect(await sendTx(30, 7610)).toBeGreaterThan(900);
    const limited = await throttled(1);
    expect(limited).toBeGreaterThan(before);

    const off = cli('--tx-rate-ops', 'off');
    expect(off.status, off.stderr).toBe(0);
    expect(off.stdout).toBe('rx: unlimited\ntx: unlimited\n');
    expect(await limitSeries()).toEqual([]);
    await sendTx(200, 7611);
    expect(await throttled(1)).toBe(limited);
    const set = logLines(lg!).filter((l) => l['code'] === 'LGNET_API_RATE_LIMIT_SET');
    expect(set.at(-1)).toMatchObject({ before: { tx: { ops: { size: 10, refillMs: 500 } } }, after: { rx: null, tx: null } });
  });

  it('an RX limit put on through PATCH throttles what the host sends the guest, and every frame still arrives', async () => {
    const counted = await apiSeries();
    const r = await apiRequest(api, 'PATCH', '/rate-limit', { rx: { ops: { size: 10, refillMs: 500 } } });
    expect(r).toEqual({ status: 200, body: { rx: { ops: { size: 10, refillMs: 500 } }, tx: null } });
    expect((await apiRequest(api, 'GET', '/rate-limit')).body).toEqual(r.body);
    expect(await limitSeries()).toEqual(['rx/ops 20 10']);
    // lgnet stats shows them too, as JSON and in its view.
    const st = spawnSync(LGNET, ['stats', metrics, '--once', '--json', '--interval', '100'], { encoding: 'utf8', timeout: 20_000 });
    expect(st.status, st.stderr).toBe(0);
    expect((JSON.parse(st.stdout) as { rate_limits: unknown }).rate_limits).toEqual({ rx: { frames_per_s: 20 }, tx: null });
    const view = spawnSync(LGNET, ['stats', metrics, '--once', '--interval', '100'], { encoding: 'utf8', timeout: 20_000 });
    expect(view.stdout).toContain('rate limit per queue  rx 20 frames/s  tx none');
    const before = await throttled(0);
    drv.fillRx();
    const t0 = performance.now();
    sprayUdp(ns, GUEST_IP, { flows: 30, tag: 0x3c, port: 7612 });
    const got = new Set<number>();
    while (got.size < 30 && performance.now() - t0 < 10_000) {
      for (const f of drv.receive()) {
        if (f.frame.length >= 44 && f.frame[23] === 17 && ((f.frame[36]! << 8) | f.frame[37]!) === 7612 && f.frame[42] === 0x3c) got.add(f.frame[43]!);
      }
      drv.fillRx();
      await new Promise((res) => setTimeout(res, 5));
    }
    const q0 = async () => parseExposition((await httpGet({ kind: 'unix', path: metrics }, '/metrics')).body).filter((x) => x.labels['queue'] === '0').map((x) => `${x.name}${JSON.stringify(x.labels)} ${x.value}`).join('\n');
    expect(got.size, await q0()).toBe(30);
    expect(performance.now() - t0).toBeGreaterThan(900);
    expect(await throttled(0)).toBeGreaterThan(before);
    expect((await apiRequest(api, 'PATCH', '/rate-limit', { rx: null })).body).toEqual({ rx: null, tx: null });
    // Two changes and one GET, all answered 200 (the scrapes go to the metrics endpoint, not counted here).
    expect(grew(counted, await apiSeries())).toEqual({ 'lgnet_api_requests_total{200}': 3, 'lgnet_api_rate_limit_changes_total{}': 2 });
  });

  it('answers hostile requests with an error and a code, counts them, changes nothing, and goes on serving', async () => {
    const limits = (await apiRequest(api, 'GET', '/rate-limit')).body;
    const counted = await apiSeries();
    const raw = (bytes: string | Buffer): Promise<string> => new Promise((resolve) => {
      const s = createConnection(api);
      let out = '';
      s.on('data', (d) => (out += d.toString('latin1')));
      s.on('close', () => resolve(out));
      s.on('error', () => resolve(out));
      s.end(bytes);
    });
    expect(await raw('\x16\x03\x01 not http at all\r\n\r\n')).toMatch(/^HTTP\/1\.1 400 /);
    const big = `PATCH /rate-limit HTTP/1.1\r\nHost: x\r\nContent-Length: ${MAX_BODY + 10}\r\n\r\n${' '.repeat(MAX_BODY + 10)}`;
    expect(await raw(big)).toMatch(/^HTTP\/1\.1 413 [\s\S]*LGNET_API_TOO_LARGE/);
    for (const [method, path, body, status, code] of [
      ['PATCH', '/rate-limit', '{"tx": {"ops": {"size": 0, "refillMs": 1}}}', 400, API_ERROR.BAD_RATE_LIMIT],
      ['PATCH', '/rate-limit', '{"tx": {"ops": {"size": 1e400, "refillMs": 1}}}', 400, API_ERROR.BAD_RATE_LIMIT],
      ['PATCH', '/rate-limit', '{"__proto__": {"x": 1}}', 400, API_ERROR.BAD_REQUEST],
      ['PATCH', '/rate-limit', '\u0000\u00ff', 400, API_ERROR.BAD_REQUEST],
      ['DELETE', '/rate-limit', '', 405, API_ERROR.BAD_REQUEST],
      ['GET', '/../../etc/passwd', '', 404, API_ERROR.BAD_REQUEST],
    ] as const) {
      const r = await raw(`${method} ${path} HTTP/1.1\r\nHost: x\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      expect(r, `${method} ${path} ${body}`).toMatch(new RegExp(`^HTTP/1\\.1 ${status} [\\s\\S]*"code":"${code}"`));
    }
    // A body cut short: the peer goes after 10 of the 100 bytes it announced.
    await raw(`PATCH /rate-limit HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"tx": null`);
    expect(await until(() => logLines(lg!).some((l) => l.msg === 'control socket request refused' && /body (could not be read|ended)/.test(String(l['why']))), 5000)).toBe(true);
    // Every refusal counted once by its code, and every answer by its status; nothing changed. (The
    // body cut short is refused, with nobody left to answer.)
    expect(grew(counted, await apiSeries())).toEqual({
      'lgnet_api_requests_total{400}': 5, 'lgnet_api_requests_total{404}': 1, 'lgnet_api_requests_total{405}': 1, 'lgnet_api_requests_total{413}': 1,
      [`lgnet_api_refusals_total{${API_ERROR.BAD_REQUEST}}`]: 6, [`lgnet_api_refusals_total{${API_ERROR.BAD_RATE_LIMIT}}`]: 2, [`lgnet_api_refusals_total{${API_ERROR.TOO_LARGE}}`]: 1,
    });
    // More connections than it takes, held open: the ones over the cap are closed, and once they go it
    // answers again.
    const held: Socket[] = [];
    for (let i = 0; i < MAX_CONNECTIONS + 4; i++) held.push(createConnection(api).on('error', () => {}));
    await new Promise((res) => setTimeout(res, 300));
    for (const s of held) s.destroy();
    await new Promise((res) => setTimeout(res, 100));
    expect((await apiRequest(api, 'GET', '/rate-limit')).body).toEqual(limits);
    // Refusals are logged with their code; lgnet is alive and still moves the guest's frames.
    const refused = logLines(lg!).filter((l) => l.msg === 'control socket request refused').map((l) => l['code']);
    expect(refused).toEqual(expect.arrayContaining([API_ERROR.TOO_LARGE, API_ERROR.BAD_RATE_LIMIT, API_ERROR.BAD_REQUEST]));
    expect(alive(lg!)).toBe(true);
    await sendTx(20, 7613);
  });
});
