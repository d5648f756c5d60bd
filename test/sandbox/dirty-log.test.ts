/**
 * Live migration's dirty log, end to end: the harness front-end plays QEMU's migration towards lgnet's
 * vhost-user server (a NetDevice on a real tap in a test namespace) and the harness's shadow auditor
 * checks that every page lgnet writes into guest RAM is marked in the log.
 *
 *   property   runs of RX frames (written into the tap from the namespace), TX frames, enough to wrap
 *              small rings, with logging switched on and off between bursts while frames are in flight
 *              (SET_FEATURES with and without VHOST_F_LOG_ALL, with or without the rings' F_LOG), the
 *              log replaced by a new SET_LOG_BASE, pre-copy rounds (collect and re-copy) mid-traffic,
 *              and either a quiet end or a stop by GET_VRING_BASE with frames in flight. While logging
 *              is on, every page that changed outside the driver's own bytes is marked (after the
 *              write: a round that collects early loses it), and every RX buffer that received a frame
 *              sent after logging started is marked; while off nothing is required.
 *   refusals   a SET_LOG_BASE that is too small, whose offset + size wraps or lies past its fd, or that
 *              carries 0 or 2 fds: refused, connection dropped, counted by code, no fd kept, and the
 *              server serves the next front-end.
 *   replacing  a second SET_LOG_BASE releases the first log's mapping, and marks land in the new one.
 *
 * Spec: QEMU docs/interop/vhost-user.rst, "Migration" and the dirty log description; DESIGN.md "Live
 * migration", "Untrusted input" (CVE-2020-10722: log offset overflow; CVE-2019-14818: repeated
 * requests exhausting fds or memory).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import * as native from '../../native/index.ts';
import { mask } from '../../device/features.ts';
import { VU } from '../../sandbox/vhost-user/errors.ts';
import { encodeLog, F_LOG_ALL, protocolMask, REQ } from '../../sandbox/vhost-user/messages.ts';
import { DirtyLog, DirtyLogAudit, usedNotTaken } from '../../harness/dirty-log.ts';
import { ethernet, mac } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { openPacketIn, destroyAllNetns, netnsPrerequisites } from '../../harness/netns.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { FRONTEND_PROTOCOL_FEATURES, VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { createVuBed, fdCount, until, type VuBed } from './vhost-user-helpers.ts';
import { fuzzRuns } from './vhost-user-fuzz-helpers.ts';

const pre = netnsPrerequisites();
const LOG_ALL = 1n << BigInt(F_LOG_ALL);
/** Reserved for local experiments: the namespace's stack ignores these frames. */
const ETHERTYPE = 0x88b5;
/** Payload: magic, run id, sequence number, then filler that differs per frame. */
const MAGIC = 0x444c4f47; // "DLOG"
const ETH_HDR = 14;
const RAM_SIZE = 8 << 20;
/** Property runs ($LGNET_FUZZ_RUNS overrides): about 0.1–0.2 s each on 2 vCPUs. */
const RUNS = fuzzRuns(100);

let bed: VuBed;
let pkt = -1;
let tapMac: Uint8Array;
let guestMac: Uint8Array;
let runSerial = 0;

/** Lines of /proc/self/maps that map the memfd called `name`: this process's mappings of it. */
function mapsOf(name: string): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(`/memfd:${name} `)).length;
}

function frame(dst: Uint8Array, src: Uint8Array, run: number, seq: number, size: number): Uint8Array {
  const payload = new Uint8Array(size - ETH_HDR);
  const dv = new DataView(payload.buffer);
  dv.setUint32(0, MAGIC);
  dv.setUint32(4, run);
  dv.setUint32(8, seq);
  for (let i = 12; i < payload.length; i++) payload[i] = (i * 13 + seq * 7 + run) & 255;
  return ethernet(dst, src, ETHERTYPE, payload);
}

/** run id and sequence number of one of our frames, or null for anything else. */
function parse(f: Uint8Array): { run: number; seq: number } | null {
  if (f.length < ETH_HDR + 12 || ((f[12]! << 8) | f[13]!) !== ETHERTYPE) return null;
  const dv = new DataView(f.buffer, f.byteOffset + ETH_HDR, 12);
  if (dv.getUint32(0) !== MAGIC) return null;
  return { run: dv.getUint32(4), seq: dv.getUint32(8) };
}

/** Reads and discards what the packet socket has queued (the guest's TX frames, seen on the tap). */
function drainPacketSocket(): void {
  const buf = new Uint8Array(2048);
  for (let i = 0; i < 10_000 && native.fdRead(pkt, buf) > 0; i++);
}

/** A harness guest attached to the bed's server: small rings, its own RAM, a dirty log and an auditor. */
class Guest {
  readonly run = ++runSerial;
  readonly ram: GuestRam;
  readonly drv: VirtioNetDriver;
  fe!: VhostUserFrontend;
  /** The log lgnet was last given. */
  log: DirtyLog | null = null;
  /** Every log made, closed at the end. */
  readonly logs: DirtyLog[] = [];
  /** The rings were last set up with VHOST_VRING_F_LOG. */
  ringsLogged = false;
  audit: DirtyLogAudit | null = null;
  logging = false;
  rxSent = 0;
  rxGot = 0;
  txSent = 0;
  /** Frames with a sequence number from here on were written into the tap after logging started. */
  requiredFrom = Infinity;
  /** RX frames seen in buffers that had to be marked, over the run. */
  required = 0;
  /** Pages the pre-copy rounds collected and copied. */
  syncedPages = 0;

  /** `gpa`: where guest RAM starts (the log must cover up to its end, not just its size). */
  constructor(opts: { queueSize: number; mrg: boolean; eventIdx: boolean; gpa?: number }) {
    const features = mask('VERSION_1', 'MAC', ...(opts.mrg ? ['MRG_RXBUF' as const] : []), ...(opts.eventIdx ? ['RING_EVENT_IDX' as const] : []));
    this.ram = new GuestRam(RAM_SIZE, { gpa: opts.gpa ?? 0 });
    this.drv = new VirtioNetDriver(this.ram, { features: features & bed.dev.offered, queueSize: opts.queueSize });
  }

  async attach(protocolFeatures?: bigint): Promise<void> {
    this.fe = await VhostUserFrontend.connect(bed.path);
    await this.fe.attachDriver(this.drv, this.ram, protocolFeatures !== undefined ? { protocolFeatures } : {});
    this.drv.fillRx();
  }

  /**
   * Logging on. The first time as QEMU starts a migration: SET_LOG_BASE, SET_FEATURES with LOG_ALL,
   * SET_VRING_ADDR with F_LOG. Later: LOG_ALL only, or (`rings`, or when the rings were switched off)
   * LOG_ALL and the rings' F_LOG again over the log lgnet holds. Frames from here on must be logged.
   */
  async logOn(logOffset: number, rings = true): Promise<void> {
    if (!this.log) {
      this.log = this.newLog(logOffset);
      await this.fe.startDirtyLog(this.drv, this.ram, { log: this.log });
      this.audit = new DirtyLogAudit(this.ram, this.log, { driver: this.drv });
    } else if (rings || !this.ringsLogged) {
      await this.fe.startDirtyLog(this.drv, this.ram, { log: this.log, setBase: false });
    } else {
      await this.fe.setFeatures(this.fe.features | LOG_ALL);
    }
    this.ringsLogged = true;
    this.logging = true;
    this.requiredFrom = this.rxSent;
    this.audit!.begin();
  }

  /**
   * Quiesces, audits what was written while logging was on, then switches logging off: LOG_ALL only,
   * or (`rings`) with the rings' F_LOG too, as QEMU ends a migration.
   */
  async logOff(rings = false): Promise<void> {
    await this.quiesce();
    await this.expectAllLogged();
    if (rings) await this.fe.stopDirtyLog();
    else await this.fe.setFeatures(this.fe.features & ~LOG_ALL);
    this.ringsLogged &&= !rings;
    this.logging = false;
    this.requiredFrom = Infinity;
  }

  /** A second SET_LOG_BASE, frames in flight: the new log takes over (a mark in the old one still counts). */
  async rebase(logOffset: number): Promise<void> {
    if (!this.log) return;
    const next = this.newLog(logOffset);
    await this.fe.setLogBase(next.fd, next.size, next.offset);
    this.log = next;
    this.audit!.replaceLog(next);
  }

  /** A pre-copy round while frames are in flight (nothing to do while logging is off). */
  sync(): void {
    if (this.logging) this.syncedPages += this.audit!.sync();
  }

  private newLog(offset: number): DirtyLog {
    const log = new DirtyLog(this.ram, { offset, tail: 64 });
    this.logs.push(log);
    return log;
  }

  /** Writes n frames into the tap from the namespace side: lgnet reads them into RX buffers. */
  injectRx(n: number, size: number): void {
    for (let i = 0; i < n; i++) {
      const f = frame(guestMac, tapMac, this.run, this.rxSent, size);
      expect(native.fdWrite(pkt, f)).toBe(f.length);
      this.rxSent++;
    }
  }

  /** Queues n TX frames, waiting for completions when the ring is full (bounded). */
  async sendTx(n: number, size: number): Promise<void> {
    const deadline = Date.now() + 5000;
    for (let i = 0; i < n; i++) {
      const f = frame(tapMac, guestMac, this.run, this.txSent, size);
      while (!this.drv.send(f)) {
        if (Date.now() > deadline) throw new Error(`TX ring stayed full: ${this.txSent} sent`);
        await this.drv.tx[0]!.waitCall(20);
      }
      this.txSent++;
      // Take RX as it comes so that the RX ring keeps wrapping while TX runs; a pre-copy round too.
      if (i % 8 === 7) {
        this.takeRx();
        this.sync();
      }
    }
  }

  /**
   * Takes RX completions, as drv.receive() does but exactly those read from the used ring first, so
   * that none escapes the check: while logging is on, the buffer of each frame sent since it started
   * must be marked. Frames fit one buffer (≤ 1514 bytes), MRG_RXBUF or not.
   */
  takeRx(): void {
    const rx = this.drv.rx[0]!;
    const hdr = this.drv.hdrLen;
    const pending = usedNotTaken(rx);
    for (const u of pending) {
      expect(rx.q.popUsed(), 'the used ring as read a moment ago').toBe(u.head);
      expect(u.slot, `head ${u.head} is one the driver posted`).toBeGreaterThanOrEqual(0);
      rx.slotOf[u.head] = -1;
      rx.giveSlot(u.slot);
      const id = u.len > hdr ? parse(this.ram.read(u.addr + hdr, Math.min(u.len - hdr, ETH_HDR + 12))) : null;
      if (!id || id.run !== this.run) continue;
      this.rxGot++;
      if (this.logging && id.seq >= this.requiredFrom) {
        this.audit!.require(u.addr, u.len, `RX frame ${id.seq} in RX buffer ${u.slot} of queue ${rx.index}`);
        this.required++;
      }
    }
    if (pending.length) this.drv.fillRx();
  }

  /** Waits until every RX frame sent arrived and every TX frame completed (bounded). */
  async quiesce(): Promise<void> {
    const deadline = Date.now() + 5000;
    this.takeRx();
    while (this.rxGot < this.rxSent && Date.now() < deadline) {
      await this.drv.rx[0]!.waitCall(20);
      this.takeRx();
      this.sync(); // rounds while the last frames land
    }
    expect(this.rxGot, 'RX frames received').toBe(this.rxSent);
    expect(await this.drv.drainTx(0, 5000), 'TX frames still in flight').toBe(0);
  }

  /**
   * The audit of a logging period, once traffic is quiet. A write is marked just after it lands, and a
   * worker going to sleep still writes its notification fields: a check that fails is taken again a
   * little later, and only a page still unlogged then fails the test.
   */
  async expectAllLogged(): Promise<void> {
    const a = this.audit!;
    if (a.check().ok) return;
    await new Promise((r) => setTimeout(r, 100));
    const r = a.check();
    expect(r.unlogged, r.summary).toEqual([]);
    expect(r.strayLogBytes).toBe(0);
  }

  async close(): Promise<void> {
    this.fe?.close();
    await until(() => bed.server.connection === null, 5000);
    this.drv.close();
    this.ram.close();
    for (const l of this.logs) l.close();
  }
}

type Step =
  | { kind: 'rx'; n: number; size: number }
  | { kind: 'tx'; n: number; size: number }
  | { kind: 'toggle'; rings: boolean }
  | { kind: 'rebase'; offset: number }
  | { kind: 'sync' }
  | { kind: 'quiet' };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('rx' as const), n: fc.integer({ min: 1, max: 40 }), size: fc.integer({ min: 60, max: 1514 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('tx' as const), n: fc.integer({ min: 1, max: 40 }), size: fc.integer({ min: 60, max: 1514 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('toggle' as const), rings: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('rebase' as const), offset: fc.constantFrom(0, 4096, 8192) }) },
  { weight: 2, arbitrary: fc.constant({ kind: 'sync' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'quiet' as const }) },
);

interface RunOptions {
  /** Guest physical address of guest RAM. */
  gpa?: number;
  queueSize: number;
  mrg: boolean;
  eventIdx: boolean;
  /** SET_LOG_BASE's mmap_offset. */
  logOffset: number;
  /** Logging on from the start; else the first toggle starts it (SET_LOG_BASE included) mid-traffic. */
  logFromStart: boolean;
  /**
   * End as a migration's source does: GET_VRING_BASE on every ring with frames still in flight, then
   * the last audit (QEMU's final log sync follows the stop). Else quiesce and audit.
   */
  stopAtEnd?: boolean;
}

/**
 * One run: attach, the steps, a final audit. A toggle right after a burst lands while its frames are
 * in flight: switching on needs nothing to settle; switching off audits first (after quiescing).
 */
async function play(opts: RunOptions, steps: readonly Step[]): Promise<Guest> {
  const g = new Guest(opts);
  try {
    await g.attach();
    if (opts.logFromStart) await g.logOn(opts.logOffset);
    for (const s of steps) {
      if (s.kind === 'rx') g.injectRx(s.n, s.size);
      else if (s.kind === 'tx') await g.sendTx(s.n, s.size);
      else if (s.kind === 'quiet') await g.quiesce();
      else if (s.kind === 'rebase') await g.rebase(s.offset);
      else if (s.kind === 'sync') g.sync();
      else if (g.logging) await g.logOff(s.rings);
      else await g.logOn(opts.logOffset, s.rings);
    }
    if (opts.stopAtEnd) {
      await g.fe.stopDriver(g.drv);
      g.takeRx(); // the completions before the stop: their buffers must be marked too
    } else {
      await g.quiesce();
    }
    if (g.logging) await g.expectAllLogged();
    return g;
  } finally {
    await g.close();
    drainPacketSocket();
  }
}

describe.skipIf(!pre.ok)('dirty log: harness front-end ↔ lgnet (vhost-user) ↔ tap', () => {
  beforeAll(async () => {
    bed = await createVuBed();
    pkt = openPacketIn(bed.ns, 'lgtap0');
    tapMac = mac(bed.ns.exec('cat', '/sys/class/net/lgtap0/address').trim());
    guestMac = mac(bed.guestMac);
  });
  afterAll(async () => {
    await bed?.close();
    destroyAllNetns();
  });

  it('offers VHOST_F_LOG_ALL and LOG_SHMFD, and the harness negotiates LOG_SHMFD', async () => {
    const fe = await VhostUserFrontend.connect(bed.path);
    try {
      const neg = await fe.negotiate({ features: (o) => o & mask('VERSION_1') });
      expect(neg.offered & LOG_ALL).toBe(LOG_ALL);
      expect(fe.protocolFeatures & (1n << 1n)).toBe(1n << 1n);
    } finally {
      fe.close();
    }
    expect(await until(() => bed.server.connection === null)).toBe(true);
  });

  it('RX and TX wrapping small rings with logging on: every written page is marked, RX buffers included', async () => {
    const steps: Step[] = [{ kind: 'rx', n: 20, size: 1514 }, { kind: 'tx', n: 20, size: 600 }, { kind: 'rx', n: 13, size: 61 }, { kind: 'quiet' }];
    const g = await play({ queueSize: 8, mrg: false, eventIdx: true, logOffset: 0, logFromStart: true }, steps);
    expect(g.rxGot).toBe(33);
    expect(g.required).toBe(33); // every RX buffer with a frame was checked
  });

  it('property: with logging toggled between bursts in flight, nothing written while on goes unlogged', async () => {
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          gpa: fc.constantFrom(0, 0x1234_5000, 0x4000_0000),
          queueSize: fc.constantFrom(4, 8, 16),
          mrg: fc.boolean(),
          eventIdx: fc.boolean(),
          logOffset: fc.constantFrom(0, 4096),
          logFromStart: fc.boolean(),
          stopAtEnd: fc.boolean(),
        }),
        fc.array(stepArb, { minLength: 2, maxLength: 8 }),
        async (opts, steps) => {
          runs++;
          await play(opts, steps);
        },
      ),
      // No shrinking on failure (each run takes real traffic); the seed and path in the report replay it.
      { numRuns: RUNS, endOnFailure: true },
    );
    expect(runs).toBe(RUNS);
  }, Math.max(55_000, RUNS * 1000));

  describe('SET_LOG_BASE that lgnet must refuse', () => {
    /** RAM_SIZE at 0 needs this many bytes of log: one bit per page. */
    const NEED = RAM_SIZE / 4096 / 8;
    const cases: Array<{ name: string; code: string; gpa?: number; protocol?: bigint; send(fe: VhostUserFrontend, log: DirtyLog, extraFd: number): Promise<unknown> }> = [
      { name: 'a log too small for guest memory', code: VU.BAD_LOG, send: (fe, log) => fe.setLogBase(log.fd, 8) },
      { name: 'a log one byte short', code: VU.BAD_LOG, send: (fe, log) => fe.setLogBase(log.fd, NEED - 1) },
      // Enough bits for the RAM's size, not for its highest address.
      { name: 'a log sized for RAM at 0 while it sits at 64 MiB', code: VU.BAD_LOG, gpa: 64 << 20, send: (fe, log) => fe.setLogBase(log.fd, NEED) },
      { name: 'a size of 0', code: VU.BAD_LOG, send: (fe, log) => fe.setLogBase(log.fd, 0) },
      // offset + size wraps past 2^64 (CVE-2020-10722).
      { name: 'an offset + size that overflows', code: VU.BAD_LOG, send: (fe, log) => fe.setLogBase(log.fd, 0x2000n, 0xffff_ffff_ffff_f000n) },
      { name: 'offset + size past the end of the fd', code: VU.BAD_LOG, send: (fe, log) => fe.setLogBase(log.fd, log.size, 4096) },
      { name: 'an fd that cannot be mapped (an eventfd)', code: VU.BAD_LOG, send: (fe, log, extra) => fe.setLogBase(extra, log.size) },
      {
        name: 'no fd', code: VU.BAD_FD_COUNT,
        send: async (fe, log) => fe.sendRequest(REQ.SET_LOG_BASE, encodeLog({ mmapSize: log.size, mmapOffset: 0 }), { fds: [] }),
      },
      {
        name: 'two fds', code: VU.BAD_FD_COUNT,
        send: async (fe, log, extra) => fe.sendRequest(REQ.SET_LOG_BASE, encodeLog({ mmapSize: log.size, mmapOffset: 0 }), { fds: [log.fd, extra] }),
      },
      {
        name: 'LOG_SHMFD not negotiated', code: VU.UNSUPPORTED_REQUEST, protocol: FRONTEND_PROTOCOL_FEATURES & ~protocolMask('LOG_SHMFD'),
        send: async (fe, log) => fe.sendRequest(REQ.SET_LOG_BASE, encodeLog({ mmapSize: log.size, mmapOffset: 0 }), { fds: [log.fd] }),
      },
    ];

    for (const c of cases) {
      it(`${c.name}: refused (${c.code}), connection dropped, no fd or mapping kept`, async () => {
        const baseline = fdCount();
        const before = bed.server.metrics.errors[c.code as keyof typeof bed.server.metrics.errors] ?? 0;
        const g = new Guest({ queueSize: 8, mrg: false, eventIdx: false, ...(c.gpa !== undefined ? { gpa: c.gpa } : {}) });
        const log = new DirtyLog(g.ram);
        const extra = native.eventfdCreate();
        try {
          await g.attach(c.protocol);
          await c.send(g.fe, log, extra).catch((e: { code?: string }) => expect(['FRONTEND_NACK', 'FRONTEND_CLOSED']).toContain(e.code));
          expect(await g.fe.waitClosed(3000), 'the back-end drops the connection').toBe(true);
          expect(await until(() => bed.server.connection === null, 5000)).toBe(true);
          expect(bed.server.metrics.errors[c.code as keyof typeof bed.server.metrics.errors]).toBe(before + 1);
          expect(mapsOf(log.name), 'only the harness maps the log').toBe(1);
        } finally {
          native.close(extra);
          log.close();
          await g.close();
        }
        expect(await until(() => fdCount() === baseline, 3000), `fds: ${fdCount()} now, ${baseline} before`).toBe(true);
      });
    }

    it('a refused replacement drops the log in use too, with traffic running', async () => {
      const baseline = fdCount();
      const g = new Guest({ queueSize: 8, mrg: false, eventIdx: true });
      try {
        await g.attach();
        await g.logOn(0);
        g.injectRx(20, 800);
        await g.sendTx(10, 300);
        await expect(g.fe.setLogBase(g.log!.fd, 8)).rejects.toMatchObject({ code: expect.stringMatching(/FRONTEND_(NACK|CLOSED)/) });
        expect(await g.fe.waitClosed(3000)).toBe(true);
        expect(await until(() => bed.server.connection === null, 5000)).toBe(true);
        expect(mapsOf(g.log!.name), 'lgnet released the log it was using').toBe(1);
      } finally {
        await g.close();
      }
      expect(await until(() => fdCount() === baseline, 3000), `fds: ${fdCount()} now, ${baseline} before`).toBe(true);
    });

    it('the smallest log that covers guest memory is taken (one bit per page, not rounded)', async () => {
      const g = new Guest({ queueSize: 8, mrg: false, eventIdx: false });
      const log = new DirtyLog(g.ram, { size: NEED });
      try {
        await g.attach();
        await g.fe.setLogBase(log.fd, NEED);
        expect(mapsOf(log.name)).toBe(2);
        expect(g.fe.isClosed).toBe(false);
      } finally {
        await g.close();
        expect(mapsOf(log.name)).toBe(1);
        log.close();
      }
    });

    it('the server serves the next front-end, logging included', async () => {
      const g = await play({ queueSize: 8, mrg: true, eventIdx: false, logOffset: 0, logFromStart: true }, [{ kind: 'rx', n: 10, size: 200 }, { kind: 'tx', n: 5, size: 100 }]);
      expect(g.rxGot).toBe(10);
    });
  });

  it('the used ring is logged only with VHOST_VRING_F_LOG: without it the audit names the used ring, with it nothing is missed', async () => {
    const g = new Guest({ queueSize: 8, mrg: false, eventIdx: false });
    try {
      await g.attach();
      // Half a migration start: the log and LOG_ALL, but the rings' addresses still without F_LOG.
      const log = new DirtyLog(g.ram);
      g.log = log;
      g.logs.push(log);
      await g.fe.setLogBase(log.fd, log.size);
      await g.fe.setFeatures(g.fe.features | LOG_ALL);
      g.audit = new DirtyLogAudit(g.ram, log, { driver: g.drv });
      g.logging = true;
      g.requiredFrom = g.rxSent;
      g.audit.begin();
      g.injectRx(12, 300);
      await g.quiesce();
      const r = g.audit.check();
      // RX's used ring for certain; TX's too when its worker rewrote its notification flags meanwhile.
      expect(r.unlogged.flatMap((u) => u.what), 'the used ring is written and not logged').toContain('used ring of queue 0');
      for (const u of r.unlogged) {
        expect(u.what.some((w) => w.startsWith('used ring of queue ')), u.what.join(', ')).toBe(true);
        expect(u.required, 'RX buffers are logged anyway').toEqual([]);
      }
      expect(g.required).toBe(12);

      // The rest of the start: F_LOG on every ring (LOG_ALL sent again, unchanged).
      await g.fe.startDirtyLog(g.drv, g.ram, { log, setBase: false });
      g.requiredFrom = g.rxSent;
      g.audit.begin();
      g.injectRx(12, 300);
      await g.quiesce();
      await g.expectAllLogged();
    } finally {
      await g.close();
    }
  });

  it('a second SET_LOG_BASE releases the first log, and marks go to the new one; repeating leaks nothing', async () => {
    const g = new Guest({ queueSize: 8, mrg: false, eventIdx: false });
    const logs: DirtyLog[] = [];
    try {
      await g.attach();
      const first = new DirtyLog(g.ram);
      logs.push(first);
      await g.fe.startDirtyLog(g.drv, g.ram, { log: first });
      expect(mapsOf(first.name), 'the harness and lgnet map the log').toBe(2);
      const fds = fdCount();

      let current = first;
      for (let i = 0; i < 20; i++) {
        const next = new DirtyLog(g.ram, { offset: i % 2 ? 4096 : 0 });
        logs.push(next);
        await g.fe.setLogBase(next.fd, next.size, next.offset);
        expect(mapsOf(current.name), `log ${i}: the old mapping is released`).toBe(1);
        expect(mapsOf(next.name)).toBe(2);
        current = next;
      }
      // Each replaced log is ours alone, and lgnet holds no fd for any of them (it maps, then closes).
      expect(fdCount()).toBe(fds + 20);
      for (const l of logs.slice(0, -1)) expect(mapsOf(l.name)).toBe(1);

      // Traffic after the replacement: marks land in the current log only.
      for (const l of logs) l.clear();
      g.logging = true;
      g.requiredFrom = g.rxSent;
      g.audit = new DirtyLogAudit(g.ram, current, { driver: g.drv });
      g.audit.begin();
      g.injectRx(10, 500);
      await g.quiesce();
      await g.expectAllLogged();
      expect(g.syncedPages + current.dirtyPages().length, 'pages marked in the current log').toBeGreaterThan(0);
      for (const l of logs.slice(0, -1)) expect(l.dirtyPages()).toEqual([]);
    } finally {
      await g.close();
      for (const l of logs) {
        // The connection is gone: lgnet released the last log too.
        expect(mapsOf(l.name)).toBe(1);
        l.close();
      }
    }
  });
});
