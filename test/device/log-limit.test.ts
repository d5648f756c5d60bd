/**
 * The log lines a guest can cause at will are bounded (device/log-limit.ts): a TX frame the tap refuses
 * (EINVAL) followed by a good one used to log a backend "failing" and a "works again" line each time,
 * ~2,000 lines a second from a guest alternating them. Counters still count every frame; the log says
 * up to LOG_BURST lines per key and period, then one summary with the last state.
 *   - LogLimiter on a driven clock (fake timers);
 *   - a NetDevice fed 300 refused frames alternating with 300 good ones;
 *   - refused control commands in a loop;
 *   - a queue broken again after every reset.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ACK, CTRL } from '../../device/ctrl.ts';
import { LOG_BURST, LOG_PERIOD_MS, LogLimiter, type LogEvent } from '../../device/log-limit.ts';
import { mask } from '../../device/features.ts';
import { udpFrame } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { netnsPrerequisites } from '../../harness/netns.ts';
import { SplitRingBuilder } from '../../harness/rings.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import * as native from '../../native/index.ts';
import { createBed, expectedPayload, ip4, type Bed } from './helpers.ts';

const pre = netnsPrerequisites();

describe('LogLimiter (driven clock)', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  const ev = (n: number, state: string): LogEvent => ({ level: 'warn', msg: `event ${n}`, state });
  const sum = (state: string) => (held: number): LogEvent => ({ level: 'warn', msg: 'summary', held, state });

  it('passes a burst, holds the rest, and at the period\'s end says how many and the last state', () => {
    vi.useFakeTimers();
    const out: LogEvent[] = [];
    const l = new LogLimiter((e) => out.push(e), 3, 1000);
    for (let i = 0; i < 10; i++) l.log('a', ev(i, i % 2 ? 'ok' : 'failing'), sum(i % 2 ? 'ok' : 'failing'));
    expect(out.map((e) => e.msg)).toEqual(['event 0', 'event 1', 'event 2']);
    vi.advanceTimersByTime(999);
    expect(out).toHaveLength(3);
    vi.advanceTimersByTime(1);
    expect(out).toHaveLength(4);
    expect(out[3]).toEqual({ level: 'warn', msg: 'summary', held: 7, state: 'ok' }); // event 9 was the last
    // The summary counts as the new period's first line: two more pass, then holding again.
    for (let i = 10; i < 14; i++) l.log('a', ev(i, 'failing'), sum('failing'));
    expect(out.map((e) => e.msg).slice(4)).toEqual(['event 10', 'event 11']);
    vi.advanceTimersByTime(1000);
    expect(out[6]).toEqual({ level: 'warn', msg: 'summary', held: 2, state: 'failing' });
    expect(vi.getTimerCount()).toBe(0);
    l.close();
  });

  it('keys are apart; a quiet period restores the whole burst; nothing held means no summary', () => {
    vi.useFakeTimers();
    const out: LogEvent[] = [];
    const l = new LogLimiter((e) => out.push(e), 2, 1000);
    l.log('a', ev(0, 'x'), sum('x'));
    l.log('a', ev(1, 'x'), sum('x'));
    l.log('b', ev(2, 'x'), sum('x'));
    expect(out).toHaveLength(3);
    expect(vi.getTimerCount()).toBe(0);
    vi.advanceTimersByTime(1000);
    l.log('a', ev(3, 'x'), sum('x'));
    l.log('a', ev(4, 'x'), sum('x'));
    expect(out.map((e) => e.msg)).toEqual(['event 0', 'event 1', 'event 2', 'event 3', 'event 4']);
    l.close();
  });

  it('close() logs what is held at once and leaves no timer; nothing is logged after it', () => {
    vi.useFakeTimers();
    const out: LogEvent[] = [];
    const l = new LogLimiter((e) => out.push(e), 1, 60_000);
    l.log('a', ev(0, 'x'), sum('x'));
    l.log('a', ev(1, 'y'), sum('y'));
    expect(vi.getTimerCount()).toBe(1);
    l.close();
    expect(vi.getTimerCount()).toBe(0);
    expect(out[1]).toEqual({ level: 'warn', msg: 'summary', held: 1, state: 'y' });
    l.log('a', ev(2, 'z'), sum('z'));
    expect(out).toHaveLength(2);
  });
});

describe.skipIf(!pre.ok)('a guest that makes the backend refuse every other frame', () => {
  let bed: Bed | undefined;
  afterEach(async () => {
    await bed?.close();
    bed = undefined;
  });

  it(`is counted frame by frame and logs at most ${LOG_BURST} lines a period, then a summary with the last state`, { timeout: 30_000 }, async () => {
    const b = (bed = await createBed({ accept: ['VERSION_1', 'RING_EVENT_IDX', 'MAC', 'MTU', 'CSUM', 'GUEST_CSUM'] }));
    const logs: LogEvent[] = [];
    b.dev.on('log', (e: LogEvent) => logs.push(e));
    const frame = udpFrame({ srcMac: b.guestMac, dstMac: b.tapMac, srcIp: ip4(b.guestIp), dstIp: ip4(b.hostIp), srcPort: 5000, dstPort: 7100, payload: expectedPayload(100, 0) });
    const N = 300;
    const t0 = Date.now();
    for (let i = 0; i < N; i++) {
      // A vnet hdr_len beyond the frame: the tap answers EINVAL. Each in its own pass, then a good one.
      expect(b.drv.send(frame, { hdr: { hdrLen: 60_000 }, kick: true })).toBe(true);
      expect(await b.drv.drainTx()).toBe(0);
      expect(b.drv.send(frame, { kick: true })).toBe(true);
      expect(await b.drv.drainTx()).toBe(0);
    }
    const took = Date.now() - t0;
    const m = b.dev.metrics().queues[1]!;
    expect(m.txDropBackend).toBe(N);
    expect(m.frames).toBe(N);
    expect(m.backendErrno).toBe(22);
    const backend = () => logs.filter((e) => typeof e.msg === 'string' && e.msg.startsWith('backend'));
    // 2N edges; the run took a period or a few, each allowing LOG_BURST lines and one summary.
    const periods = Math.ceil(took / LOG_PERIOD_MS) + 1;
    expect(backend().length).toBeLessThanOrEqual(periods * (LOG_BURST + 1));
    expect(backend()[0]).toMatchObject({ level: 'warn', msg: 'backend failing: frames are dropped and counted', code: 'EINVAL', queue: 1 });
    // The last edge was "works again": the summary says so, and how many it held, within a period.
    const before = backend().length;
    const settled = await new Promise<boolean>((resolve) => {
      const deadline = Date.now() + LOG_PERIOD_MS + 2000;
      const tick = () => (backend().length > before ? resolve(true) : Date.now() > deadline ? resolve(false) : setTimeout(tick, 50));
      tick();
    });
    expect(settled, 'a summary line came').toBe(true);
    const last = backend().at(-1)!;
    expect(last).toMatchObject({ level: 'info', queue: 1 });
    expect(last.msg).toMatch(/^backend works again, after \d+ changes of state not logged one by one$/);
    const held = backend().reduce((n, e) => n + (typeof e['held'] === 'number' ? e['held'] : 1), 0);
    expect(held, 'every edge logged or counted in a summary').toBe(2 * N);
  });

  it('refused control commands: each answered and counted, the log bounded', async () => {
    const b = (bed = await createBed({ accept: ['VERSION_1', 'MAC', 'CTRL_VQ', 'CTRL_RX'], driver: { ctrl: { maxPairs: 1 } } }));
    const logs: LogEvent[] = [];
    b.dev.on('log', (e: LogEvent) => logs.push(e));
    const N = 100;
    for (let i = 0; i < N; i++) expect(await b.drv.ctrl(CTRL.RX, CTRL.RX_PROMISC, new Uint8Array([0, 0]))).toBe(ACK.ERR);
    expect(b.dev.metrics().ctrl.errors).toBe(N);
    const refused = logs.filter((e) => typeof e.msg === 'string' && e.msg.startsWith('control command'));
    expect(refused.length).toBeGreaterThan(0);
    expect(refused.length).toBeLessThanOrEqual(2 * (LOG_BURST + 1));
  });
  it('a guest that breaks its TX queue again after every reset: each break an event, the log bounded', async () => {
    const b = (bed = await createBed({ accept: ['VERSION_1', 'MAC'] }));
    const logs: LogEvent[] = [];
    b.dev.on('log', (e: LogEvent) => logs.push(e));
    let events = 0;
    b.dev.on('broken', () => events++);
    const N = 12;
    for (let i = 0; i < N; i++) {
      // A fresh guest each time, as after a reset: its TX ring gets a descriptor that chains to itself.
      await b.dev.reset();
      const ram = new GuestRam(48 << 20);
      const drv = new VirtioNetDriver(ram, { features: b.dev.offered & mask('VERSION_1', 'MAC') });
      try {
        await drv.attach(b.dev);
        const tx = drv.tx[0]!;
        SplitRingBuilder.over(ram.mem, tx.setup, ram).addDescLoop([0], { len: 64 });
        native.eventfdWrite(tx.kickFd, 1);
        const deadline = Date.now() + 5000;
        while (events <= i && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
        expect(events, `break ${i + 1}`).toBe(i + 1);
      } finally {
        await b.dev.reset();
        drv.close();
        ram.close();
      }
    }
    const lines = logs.filter((e) => typeof e.msg === 'string' && e.msg.startsWith('queue broken'));
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.length).toBeLessThanOrEqual(2 * (LOG_BURST + 1));
    expect(lines[0]).toMatchObject({ level: 'error', queue: 1, code: 'VRING_DESC_LOOP' });
  });
});
