/**
 * Dirty logging in the embedded device (NetDevice.startDirtyLog, setLogging, setDirtyLog), with a real
 * tap: every page of guest memory that the device changed is marked in the log. A shadow copy of the
 * guest's RAM, taken when the driver has made its own writes, tells which pages the device changed;
 * the log, collected before the shadow is taken, must hold each of them. Rounds wrap the rings, logging
 * is toggled between rounds and in the middle of a stream, and bad logs are refused with nothing kept.
 */
import { ftruncateSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { NET_ERROR } from '../../device/errors.ts';
import { LOG_PAGE_SIZE, dirtyLogSize, type DirtyLog } from '../../vring/index.ts';
import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { createBed, udpSend, type Bed } from './helpers.ts';
import { begin, expectLogged, untilUsed, usedIdx } from './dirty-log-helpers.ts';
import { sniffFrame } from '../helpers/sniff.ts';

const QSIZE = 16;

async function rxRound(bed: Bed, log: DirtyLog, logging: boolean, frames: number, size: number): Promise<void> {
  const ring = bed.drv.rx[0]!;
  bed.drv.receive(); // the driver's own writes (used_event, reposting) happen before the shadow
  bed.drv.fillRx();
  await new Promise((r) => setTimeout(r, 20)); // the worker's answer to the kick (avail_event) lands too
  const start = usedIdx(bed, ring);
  const shadow = begin(bed, log);
  const sender = udpSend(bed, 7000, size, frames);
  const got = await untilUsed(bed, ring, start, frames);
  sender.kill();
  expect(got, 'frames received').toBe(frames);
  await new Promise((r) => setTimeout(r, 20));
  const changed = shadow.changedPages();
  const marked = log.collect();
  expect(changed.length, 'the device wrote something').toBeGreaterThan(0);
  if (logging) expectLogged(changed, marked, `RX round of ${frames} × ${size} B`);
  else expect(marked, 'logging is off: nothing is marked').toEqual([]);
}

for (const [name, accept] of [
  ['MRG_RXBUF and EVENT_IDX (per-frame path)', ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC'] as const],
  ['neither (batched path)', ['VERSION_1', 'MAC'] as const],
] as const) {
  describe(`embedded dirty log, ${name}`, () => {
    it('RX rounds that wrap the ring: every changed page is logged; off, nothing is; on again, everything is', async () => {
      const bed = await createBed({ accept: [...accept], driver: { queueSize: QSIZE } });
      const log = await bed.dev.startDirtyLog();
      expect(bed.dev.dirtyLogging).toBe(true);
      expect(log.bytes.length).toBe(dirtyLogSize(bed.ram.gpa + bed.ram.size));
      // 5 rounds of 12 frames through a 16-entry ring: it wraps several times.
      await rxRound(bed, log, true, 12, 1000);
      await rxRound(bed, log, true, 12, 1400);
      await bed.dev.setLogging(false);
      await rxRound(bed, log, false, 12, 900);
      await bed.dev.setLogging(true);
      await rxRound(bed, log, true, 12, 1200);
      await rxRound(bed, log, true, 12, 300);
      expect(bed.dev.metrics().queues[0]!.dirtyLogMissed).toBe(0);
      await bed.dev.stopDirtyLog();
      expect(bed.dev.dirtyLogging).toBe(false);
    });
  });
}

describe('embedded dirty log under a stream', () => {
  it('toggled while frames flow, the device never stalls, and once on, every later write is logged', async () => {
    const bed = await createBed({ accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC'], driver: { queueSize: 256 } });
    const ring = bed.drv.rx[0]!;
    bed.drv.fillRx();
    const log = await bed.dev.startDirtyLog();
    const start = usedIdx(bed, ring);
    // 120 frames flow while logging flips; 80 more are sent once it is on, however long the flips took.
    const senders = [udpSend(bed, 7001, 800, 120, 2)];
    try {
      for (let i = 0; i < 6; i++) {
        await bed.dev.setLogging(i % 2 === 1);
        await new Promise((r) => setTimeout(r, 15));
      }
      await bed.dev.setLogging(true);
      const shadow = begin(bed, log);
      const before = (usedIdx(bed, ring) - start) & 0xffff;
      senders.push(udpSend(bed, 7001, 800, 80, 2));
      const got = await untilUsed(bed, ring, start, 200, 10_000);
      expect(got, 'every frame arrived while logging flipped').toBe(200);
      expect(got - before, 'frames arrived after logging went on').toBeGreaterThanOrEqual(80);
      await new Promise((r) => setTimeout(r, 20));
      expectLogged(shadow.changedPages(), log.collect(), 'after the toggles');
    } finally {
      for (const s of senders) s.kill();
    }
  });
});

describe('embedded dirty log on TX', () => {
  it('TX writes only the used ring, and it is logged (elements, idx) across wraps', async () => {
    const bed = await createBed({ accept: ['VERSION_1', 'RING_EVENT_IDX', 'MAC'], driver: { queueSize: QSIZE } });
    const ring = bed.drv.tx[0]!;
    const log = await bed.dev.startDirtyLog();
    const frame = udpFrame({ srcMac: bed.guestMac, dstMac: bed.tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp), srcPort: 1, dstPort: 9, payload: new Uint8Array(100) });
    let sawUsed = 0;
    for (let round = 0; round < 6; round++) {
      bed.drv.reclaimTx();
      let n = 0;
      while (n < 10 && bed.drv.send(frame, { kick: false })) n++;
      ring.q.publish(); // the driver's avail.idx write, before the shadow; the kick after it
      const start = usedIdx(bed, ring);
      const shadow = begin(bed, log);
      native.eventfdWrite(ring.kickFd, 1);
      expect(await untilUsed(bed, ring, start, n)).toBe(n);
      await new Promise((r) => setTimeout(r, 20));
      const changed = shadow.changedPages();
      const usedPage = Math.floor(ring.setup.used / LOG_PAGE_SIZE) * LOG_PAGE_SIZE;
      // A worker still awake from the last round may take the frames before the shadow: that round
      // then proves less, and most rounds must not be like that.
      if (changed.includes(usedPage)) sawUsed++;
      expectLogged(changed, log.collect(), `TX round ${round}`);
    }
    expect(sawUsed, 'rounds in which the device wrote its used ring after the shadow').toBeGreaterThanOrEqual(3);
  });
});

describe('embedded dirty log: bad logs and replacement', () => {
  const maps = (name: string): number => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(`/memfd:${name} `)).length;

  it('a log too small for guest memory, or past the end of its fd, is refused (NET_BAD_DIRTY_LOG) and nothing is mapped', async () => {
    const bed = await createBed({ driver: { queueSize: QSIZE } });
    const need = dirtyLogSize(bed.ram.gpa + bed.ram.size);
    const fd = native.memfdCreate('lgtest-badlog', need);
    try {
      await expect(bed.dev.setDirtyLog({ fd, size: need / 2 })).rejects.toMatchObject({ code: NET_ERROR.BAD_DIRTY_LOG });
      await expect(bed.dev.setDirtyLog({ fd, size: need, offset: 4096 })).rejects.toMatchObject({ code: NET_ERROR.BAD_DIRTY_LOG });
      await expect(bed.dev.setDirtyLog({ fd, size: need, offset: Number.MAX_SAFE_INTEGER })).rejects.toMatchObject({ code: NET_ERROR.BAD_DIRTY_LOG });
      expect(maps('lgtest-badlog')).toBe(0);
      expect(bed.dev.dirtyLogging).toBe(false);
    } finally {
      native.close(fd);
    }
  });

  it('a replaced log is unmapped once the queues moved to the new one; the new one gets the marks', async () => {
    const bed = await createBed({ accept: ['VERSION_1', 'MAC'], driver: { queueSize: QSIZE } });
    const need = dirtyLogSize(bed.ram.gpa + bed.ram.size);
    const a = native.memfdCreate('lgtest-log-a', need);
    const b = native.memfdCreate('lgtest-log-b', need + 4096);
    try {
      const logA = (await bed.dev.setDirtyLog({ fd: a, size: need }))!;
      await bed.dev.setLogging(true);
      expect(maps('lgtest-log-a')).toBe(1);
      await rxRound(bed, logA, true, 4, 500);
      // The second log sits at an offset that is not page-aligned: it is mapped from the page below.
      const logB = (await bed.dev.setDirtyLog({ fd: b, size: need, offset: 100 }))!;
      expect(maps('lgtest-log-a')).toBe(0);
      expect(maps('lgtest-log-b')).toBe(1);
      await rxRound(bed, logB, true, 4, 600);
      await bed.dev.setDirtyLog(null);
      expect(maps('lgtest-log-b')).toBe(0);
      expect(bed.dev.dirtyLogging).toBe(false);
    } finally {
      native.close(a);
      native.close(b);
    }
  });
});

describe('embedded dirty log: a log nobody can shrink', () => {
  it('a sealable memfd is sealed against shrinking once mapped: truncating the log or the RAM fails, and marks go on', async () => {
    const bed = await createBed({ accept: ['VERSION_1', 'MAC'], driver: { queueSize: QSIZE } });
    const need = dirtyLogSize(bed.ram.gpa + bed.ram.size);
    const fd = native.memfdCreate('lgtest-sealed-log', need);
    try {
      const log = (await bed.dev.setDirtyLog({ fd, size: need }))!;
      await bed.dev.setLogging(true);
      // What a hostile front-end would do to make the next mark (or RX write) raise SIGBUS.
      expect(() => ftruncateSync(fd, 0)).toThrow(/EPERM/);
      expect(() => ftruncateSync(bed.ram.fd, 4096)).toThrow(/EPERM/);
      await rxRound(bed, log, true, 4, 700);
    } finally {
      native.close(fd);
    }
  });
});

describe('announce', () => {
  it('announce() writes a RARP broadcast for the MAC to the tap', async () => {
    const bed = await createBed({ driver: { queueSize: QSIZE } });
    const { openPacketIn } = await import('../../harness/netns.ts');
    const sniff = openPacketIn(bed.ns, 'lgtap0');
    expect(bed.dev.announce()).toBe(true);
    const got = await sniffFrame(sniff, (f) => f[12] === 0x80 && f[13] === 0x35);
    expect(got?.length).toBe(60);
    const buf = got!;
    expect([...buf.subarray(0, 6)]).toEqual([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    expect([...buf.subarray(6, 12)]).toEqual([...mac('52:54:00:12:34:56')]);
    expect(buf[21]).toBe(3); // reverse request
    expect([...buf.subarray(22, 28)]).toEqual([...mac('52:54:00:12:34:56')]);
  });
});
