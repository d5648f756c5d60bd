/**
 * The Prometheus endpoint (sandbox/prometheus.ts, sandbox/metrics-listen.ts) on a live device: the
 * vhost-user test bed (an in-process NetDevice on a real tap in a test namespace, driven by the harness
 * front-end) with the endpoint on a unix socket and on 127.0.0.1. Scrapes taken while UDP runs both
 * ways through the tap show the counters rising; once the traffic stops, every per-queue counter in the
 * text equals NetDevice.metrics(), and the server's counters equal VhostUserServer.metrics. The text
 * passes `promtool check metrics` (Debian's prometheus package, scripts/install-deps.sh). Bad requests
 * get 400/404/405 and the endpoint goes on serving.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { names as featureNames } from '../../device/features.ts';
import type { MetricName } from '../../device/metrics.ts';
import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { destroyAllNetns, netnsPrerequisites } from '../../harness/netns.ts';
import { MAX_CONNECTIONS, METRICS_ERROR, openMetricsListener, parseListenAddress, type ListenAddress, type MetricsListener } from '../../sandbox/metrics-listen.ts';
import { ProcessSampler } from '../../sandbox/metrics-process.ts';
import { PrometheusExporter, QUEUE_SERIES } from '../../sandbox/prometheus.ts';
import { protocolNames } from '../../sandbox/vhost-user/messages.ts';
import { createVuBed, udpSend, type Guest, type VuBed } from './vhost-user-helpers.ts';
import { httpGet, parseExposition, promtool, rawExchange, valueOf, type Sample } from './metrics-helpers.ts';

const pre = netnsPrerequisites();


describe('parseListenAddress', () => {
  it('takes loopback TCP and unix paths, and refuses every other host', () => {
    expect(parseListenAddress('127.0.0.1:9100')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 9100 });
    expect(parseListenAddress('[::1]:0')).toEqual({ kind: 'tcp', host: '::1', port: 0 });
    expect(parseListenAddress('/run/lgnet/metrics.sock')).toEqual({ kind: 'unix', path: '/run/lgnet/metrics.sock' });
    expect(parseListenAddress('metrics.sock')).toEqual({ kind: 'unix', path: 'metrics.sock' });
    for (const bad of ['0.0.0.0:9100', 'localhost:9100', '[::]:9100', '10.0.0.1:80', '127.0.0.1:65536', ':9100', '', `/tmp/${'x'.repeat(120)}`]) {
      expect(() => parseListenAddress(bad), bad).toThrow(expect.objectContaining({ code: METRICS_ERROR.BAD_ADDRESS }));
    }
  });
});

describe.skipIf(!pre.ok)('Prometheus endpoint on a live device (vhost-user bed, real tap)', () => {
  let bed: VuBed;
  let g: Guest;
  let exporter: PrometheusExporter;
  let sampler: ProcessSampler;
  let unix: MetricsListener;
  let tcp: MetricsListener;

  beforeAll(async () => {
    bed = await createVuBed();
    sampler = new ProcessSampler();
    exporter = new PrometheusExporter({ device: () => bed.dev.metrics(), server: bed.server, process: sampler, version: 'test' });
    unix = await openMetricsListener({ kind: 'unix', path: join(bed.dir, 'metrics.sock') }, exporter);
    // GET /queues on the TCP listener only: the unix one shows the endpoint without it.
    tcp = await openMetricsListener({ kind: 'tcp', host: '127.0.0.1', port: 0 }, exporter, () => bed.dev.inspect());
    g = await bed.guest();
  });
  afterAll(async () => {
    await unix?.close();
    await tcp?.close();
    sampler?.close();
    await bed?.close();
    destroyAllNetns();
  });

  const scrape = async (addr: ListenAddress = unix.address): Promise<{ text: string; samples: Sample[] }> => {
    const r = await httpGet(addr, '/metrics');
    expect(r.status).toBe(200);
    expect(r.type).toBe('text/plain; version=0.0.4; charset=utf-8');
    return { text: r.body, samples: parseExposition(r.body) };
  };
  const q = (queue: number, direction: string) => ({ queue: String(queue), direction });

  it('scrapes during traffic through the tap: the counters rise, then equal NetDevice.metrics()', async () => {
    expect(tcp.address.kind === 'tcp' && tcp.address.port > 0).toBe(true);
    const tapMac = mac(bed.ns.exec('cat', '/sys/class/net/lgtap0/address').trim());
    const frame = (seq: number) => udpFrame({
      srcMac: mac(bed.guestMac), dstMac: tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp), srcPort: 40000, dstPort: 9,
      payload: new Uint8Array(200).fill(seq & 255),
    });
    const before = await scrape();
    const rx0 = valueOf(before.samples, 'lgnet_queue_frames_total', q(0, 'rx'))!;
    const tx0 = valueOf(before.samples, 'lgnet_queue_frames_total', q(1, 'tx'))!;

    // RX: 300 datagrams from the namespace to the harness guest, 5 ms apart; TX: the guest sends 300
    // frames to the namespace meanwhile. Scrapes run between the bursts, on both listeners.
    const sender = udpSend(bed.ns, bed.guestIp, 7000, 300, 300, 5);
    let received = 0;
    const rising: Array<{ rx: number; tx: number }> = [];
    for (let i = 0; i < 300; i++) {
      expect(g.drv.send(frame(i))).toBe(true);
      if (i % 10 === 9) expect(await g.drv.drainTx(0, 5000)).toBe(0);
      received += g.drv.receive(0).length;
      if (i % 60 === 59) {
        const s = (await scrape(i % 120 === 59 ? unix.address : tcp.address)).samples;
        rising.push({ rx: valueOf(s, 'lgnet_queue_frames_total', q(0, 'rx'))!, tx: valueOf(s, 'lgnet_queue_frames_total', q(1, 'tx'))! });
      }
      await new Promise((r) => setTimeout(r, 3));
    }
    expect(await g.drv.drainTx(0, 5000)).toBe(0);
    received += (await g.drv.waitRx(Math.max(0, 300 - received), { timeoutMs: 10_000 })).length;
    sender.kill();
    expect(received).toBeGreaterThanOrEqual(300);
    // Each scrape during the traffic saw more than the one before, in both directions.
    expect(rising.length).toBe(5);
    for (let i = 0; i < rising.length; i++) {
      const prev = i === 0 ? { rx: rx0, tx: tx0 } : rising[i - 1]!;
      expect(rising[i]!.tx, `scrape ${i}`).toBeGreaterThan(prev.tx);
      expect(rising[i]!.rx, `scrape ${i}`).toBeGreaterThan(prev.rx);
    }

    // Quiet now: a scrape taken between two identical device snapshots matches them exactly (a stray
    // IPv6 packet on the tap can move RX between the reads: then try again, a bounded number of times).
    let matched = false;
    for (let attempt = 0; attempt < 20 && !matched; attempt++) {
      const m0 = bed.dev.metrics();
      const { samples } = await scrape();
      const m1 = bed.dev.metrics();
      if (JSON.stringify(m0) !== JSON.stringify(m1)) {
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      matched = true;
      for (const dq of m1.queues) {
        // Every series of this queue in the text, and exactly those that QUEUE_SERIES gives its role.
        const base = q(dq.index, dq.role);
        const expected = new Map<string, number>();
        for (const [key, s] of Object.entries(QUEUE_SERIES) as Array<[MetricName, (typeof QUEUE_SERIES)[MetricName]]>) {
          if (s.only && s.only !== dq.role) continue;
          expected.set(`${s.metric} ${s.reason ?? ''}`, dq[key] * (s.scale ?? 1));
        }
        const served = new Map(samples
          .filter((x) => x.name.startsWith('lgnet_queue_') && x.labels['queue'] === base.queue && x.name !== 'lgnet_queue_running' && x.name !== 'lgnet_queue_broken_info')
          .map((x) => [`${x.name} ${x.labels['reason'] ?? ''}`, x.value]));
        expect([...served.keys()].sort(), `series of queue ${dq.index}`).toEqual([...expected.keys()].sort());
        for (const [k, v] of expected) expect(served.get(k), `${k} of queue ${dq.index}`).toBeCloseTo(v, 9);
        expect(samples.filter((x) => x.labels['queue'] === base.queue).every((x) => x.labels['direction'] === dq.role)).toBe(true);
        expect(valueOf(samples, 'lgnet_queue_running', base)).toBe(dq.running ? 1 : 0);
      }
      expect(valueOf(samples, 'lgnet_queue_frames_total', q(1, 'tx'))! - tx0).toBe(300);
      expect(valueOf(samples, 'lgnet_queue_frames_total', q(0, 'rx'))! - rx0).toBeGreaterThanOrEqual(300);
      expect(valueOf(samples, 'lgnet_queue_interrupts_total', q(0, 'rx'))).toBeGreaterThan(0);
      expect(valueOf(samples, 'lgnet_queue_kicks_total', q(1, 'tx'))).toBeGreaterThan(0);
    }
    expect(matched).toBe(true);
  });

  it('GET /queues answers NetDevice.inspect() where the listener was given it, 404 where not', async () => {
    // (Before the test that disconnects the front-end: the queues run.)
    const r = await httpGet(tcp.address, '/queues');
    expect(r.status).toBe(200);
    expect(r.type).toBe('application/json');
    const doc = JSON.parse(r.body) as { pid: number; queues: Array<{ index: number; role: string; state: string; ring: { format: string; lastAvail: number } | null }> };
    expect(doc.pid).toBe(process.pid);
    const direct = await bed.dev.inspect();
    expect(doc.queues.map((q) => [q.index, q.role, q.state, q.ring?.format])).toEqual(direct.map((q) => [q.index, q.role, q.state, q.ring?.format]));
    expect(doc.queues[1]).toMatchObject({ role: 'tx', state: 'running', ring: { format: 'split', lastAvail: direct[1]!.ring!.lastAvail } });
    const none = await httpGet(unix.address, '/queues');
    expect(none.status).toBe(404);
    expect(none.body).not.toContain('/queues');
  });

  it("exposes the server's counters, the negotiated features and the process", async () => {
    const { text, samples } = await scrape();
    const sm = bed.server.metrics;
    expect(valueOf(samples, 'lgnet_vhost_user_connected')).toBe(1);
    expect(valueOf(samples, 'lgnet_vhost_user_connections_total')).toBe(sm.connections);
    expect(valueOf(samples, 'lgnet_vhost_user_reconnects_total')).toBe(sm.reconnects);
    for (const [request, n] of Object.entries(sm.requests)) expect(valueOf(samples, 'lgnet_vhost_user_messages_total', { request }), request).toBe(n);
    expect(valueOf(samples, 'lgnet_vhost_user_messages_total', { request: 'SET_MEM_TABLE' })).toBeGreaterThanOrEqual(1);
    expect(samples.filter((s) => s.name === 'lgnet_vhost_user_messages_total').reduce((a, s) => a + s.value, 0)).toBe(sm.messages);

    const c = bed.server.connection!;
    const negotiated = samples.filter((s) => s.name === 'lgnet_vhost_user_negotiated_feature_info').map((s) => s.labels['feature']);
    expect(negotiated.sort()).toEqual(featureNames(c.features).map((n) => (n === 'bit26' ? 'LOG_ALL' : n)).sort());
    expect(negotiated).toContain('VERSION_1');
    const protocol = samples.filter((s) => s.name === 'lgnet_vhost_user_negotiated_protocol_feature_info').map((s) => s.labels['feature']);
    expect(protocol.sort()).toEqual(protocolNames(c.protocolFeatures).sort());
    expect(protocol).toContain('REPLY_ACK');

    expect(valueOf(samples, 'process_resident_memory_bytes')).toBeGreaterThan(10 << 20);
    expect(valueOf(samples, 'process_open_fds')).toBeGreaterThan(10);
    expect(valueOf(samples, 'process_threads')).toBeGreaterThanOrEqual(3); // main + one worker per queue
    expect(valueOf(samples, 'process_cpu_seconds_total')).toBeGreaterThan(0);

    const check = promtool(text);
    expect(check, check.output).toEqual({ status: 0, output: '' });
  });

  it('counts a refused message by request and code, and the reconnect after it', async () => {
    const before = parseExposition((await scrape()).text);
    const reconnects = valueOf(before, 'lgnet_vhost_user_reconnects_total')!;
    const g2 = await bed.guest({ attach: false }); // the bed's server takes one front-end at a time
    g.close();
    await g2.fe.negotiate();
    // Request 9999 does not exist: refused, counted under UNKNOWN, the connection dropped.
    g2.fe.sendRequest(9999, new Uint8Array(0));
    expect(await g2.fe.waitClosed(5000)).toBe(true);
    const after = parseExposition((await scrape()).text);
    expect(valueOf(after, 'lgnet_vhost_user_errors_total', { request: 'UNKNOWN', code: 'VU_UNKNOWN_REQUEST' })).toBe(1);
    expect(valueOf(after, 'lgnet_vhost_user_reconnects_total')).toBe(reconnects + 1);
    expect(valueOf(after, 'lgnet_vhost_user_connected')).toBe(0);
    expect(after.filter((s) => s.name === 'lgnet_vhost_user_negotiated_feature_info')).toEqual([]);
    g2.close();
  });

  it('answers 400 to what is not HTTP, 404 and 405 to other paths and methods, and goes on serving', async () => {
    for (const addr of [unix.address, tcp.address]) {
      const before = parseExposition((await scrape(addr)).text);
      const bad = (code: string) => valueOf(before, 'lgnet_metrics_http_requests_total', { code }) ?? 0;
      expect(await rawExchange(addr, 'GARBAGE\r\n\r\n')).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
      expect(await rawExchange(addr, `GET /metrics HTTP/1.1\r\nHost: x\r\nX: ${'a'.repeat(20_000)}\r\n\r\n`)).toMatch(/^HTTP\/1\.1 4\d\d /);
      expect((await httpGet(addr, '/')).status).toBe(404);
      expect((await httpGet(addr, '/metrics', 'POST')).status).toBe(405);
      const json = await httpGet(addr, '/metrics.json');
      expect(json.status).toBe(200);
      expect(JSON.parse(json.body)).toMatchObject({ pid: process.pid, metrics: expect.arrayContaining([expect.objectContaining({ name: 'lgnet_queue_frames_total' })]) });
      const after = parseExposition((await scrape(addr)).text);
      expect(valueOf(after, 'lgnet_metrics_http_requests_total', { code: '400' })).toBeGreaterThanOrEqual(bad('400') + 1);
      expect(valueOf(after, 'lgnet_metrics_http_requests_total', { code: '404' })).toBe(bad('404') + 1);
      expect(valueOf(after, 'lgnet_metrics_http_requests_total', { code: '405' })).toBe(bad('405') + 1);
    }
  });

  it('listens on [::1]:PORT too', async () => {
    const v6 = await openMetricsListener({ kind: 'tcp', host: '::1', port: 0 }, exporter);
    try {
      expect(v6.address).toMatchObject({ kind: 'tcp', host: '::1' });
      const r = await httpGet(v6.address, '/metrics');
      expect(r.status).toBe(200);
      expect(valueOf(parseExposition(r.body), 'lgnet_vhost_user_connections_total')).toBe(bed.server.metrics.connections);
    } finally {
      await v6.close();
    }
  });

  it(`holds at most ${MAX_CONNECTIONS} connections at once, and serves again once they go`, async () => {
    const path = unix.address.kind === 'unix' ? unix.address.path : '';
    const idle = Array.from({ length: MAX_CONNECTIONS + 4 }, () => createConnection(path).on('error', () => {}));
    try {
      await new Promise((r) => setTimeout(r, 300));
      // The ones beyond the cap were closed right after accept; the others wait for a request.
      expect(idle.filter((s) => s.readyState === 'open').length).toBe(MAX_CONNECTIONS);
    } finally {
      for (const s of idle) s.destroy();
    }
    await new Promise((r) => setTimeout(r, 100));
    expect((await httpGet(unix.address, '/metrics')).status).toBe(200);
  });
});
