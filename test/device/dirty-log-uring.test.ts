/**
 * Dirty logging of what io_uring RX writes (the path forced to 'uring' whatever LGNET_IO says, so CI's
 * LGNET_IO=syscall run of test/device leaves this file out): the kernel's first copies that stay in
 * chains the device gives back, and the copy-down and stage rounds of MRG_RXBUF read ahead, must all be
 * logged. test/device/dirty-log.test.ts has the rest, on whichever path the suite runs.
 */
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { openPacketIn } from '../../harness/netns.ts';
import { createBed, udpSend, type Bed } from './helpers.ts';
import { begin, expectLogged, usedIdx } from './dirty-log-helpers.ts';

/**
 * Raw frames written to the tap's wire from a thread of their own, `gapUs` apart (spun, not slept),
 * sizes alternating big and small: see the io_uring test below.
 */
function blast(fd: number, count: number, dst: Uint8Array, gapUs: number): Promise<void> {
  const w = new Worker(
    `const { workerData: w } = require('node:worker_threads');
     const b = require(w.path);
     const big = new Uint8Array(8000), small = new Uint8Array(60);
     for (const f of [big, small]) { f.set(w.dst, 0); f.set([2,0,0,0,0,1, 0x88,0xb5], 6); f.fill(0x5a, 14); }
     for (let i = 0, tries = 0; i < w.count && tries < 10000000; tries++) {
       try { b.fdWrite(w.fd, i % 2 === 0 ? big : small); i++; } catch { /* the wire is full: again */ }
       for (const until = performance.now() + w.gapUs / 1000; performance.now() < until;);
     }`,
    { eval: true, workerData: { path: native.nativePath, fd, count, dst, gapUs } },
  );
  return new Promise((res, rej) => {
    w.once('error', rej);
    w.once('exit', () => res());
  });
}

describe('embedded dirty log, batched RX through io_uring under a paced sender', () => {
  // io_uring RX may find a frame after an empty slot within one round (it arrived between two READVs)
  // and copy it down into that slot (native/uring.cc): the kernel's first copy stays in a chain the
  // device gives back, and its pages must be logged all the same. That takes a frame arriving while
  // the device catches up with the sender, so frames come some µs apart (a sender faster than the
  // device keeps the tap full and rounds never meet an empty tap mid-way). It still depends on timing:
  // without the leftover logged it failed in some runs and passed in others, so it catches a loss by
  // chance; test/native/uring.test.ts checks the native side's account of every slot on every call
  // (often thousands of leftovers in 2 s), which is what the logging relies on. What makes a
  // leftover visible here: no chain is posted again within a round, so a chain given back takes one
  // more frame at most, and sizes alternate, so that frame is often smaller than the leftover and does
  // not cover its pages.
  it('every page the kernel wrote is logged, including what io_uring left in chains it gave back', async () => {
    const saved = process.env['LGNET_IO'];
    process.env['LGNET_IO'] = 'uring';
    let bed: Bed;
    try {
      bed = await createBed({ accept: ['VERSION_1', 'MAC'], mtu: 9000, ramMiB: 128, driver: { queueSize: 1024 } });
    } finally {
      if (saved === undefined) delete process.env['LGNET_IO'];
      else process.env['LGNET_IO'] = saved;
    }
    expect(bed.backend.io).toBe('uring');
    const ring = bed.drv.rx[0]!;
    const wire = openPacketIn(bed.ns, 'lgtap0');
    const log = await bed.dev.startDirtyLog();
    let frames = 0;
    for (let round = 0; round < 16; round++) {
      bed.drv.receive();
      bed.drv.fillRx();
      await new Promise((r) => setTimeout(r, 20));
      const start = usedIdx(bed, ring);
      const shadow = begin(bed, log);
      // Fewer frames than the 1024 buffers, so none is posted twice; gaps vary with the machine's speed.
      await blast(wire, 1000, bed.guestMac, [5, 10, 15, 20][round % 4]!);
      // Settled: the used index stops moving.
      for (let last = -1, now = usedIdx(bed, ring); now !== last; last = now, now = usedIdx(bed, ring)) {
        await new Promise((r) => setTimeout(r, 50));
      }
      frames += (usedIdx(bed, ring) - start) & 0xffff;
      expectLogged(shadow.changedPages(), log.collect(), `round ${round}`);
    }
    expect(frames, 'frames the device took').toBeGreaterThan(16 * 200);
    expect(bed.dev.metrics().queues[0]!.dirtyLogMissed).toBe(0);
  }, 90_000);
});

describe('embedded dirty log, MRG_RXBUF read ahead through io_uring', () => {
  // With MRG_RXBUF and buffers smaller than the largest frame, io_uring RX gives each READV of a round
  // room for the largest frame (here 3 buffers of 512 B) and copies a frame that took fewer down
  // behind the previous one (native/uring.cc uringReadvMerged). The kernel's first copies stay in
  // buffers that a later frame takes only in part, or that are kept for the next burst: the device logs
  // every buffer offered, and this checks that no page the kernel or a copy wrote goes unlogged.
  // 512-byte buffers: a 1526-byte group spans 3, copy-down rounds; 256-byte buffers: 6, the stage.
  it.each([[512, 'copy-down rounds'], [256, 'the stage']] as const)('every page the kernel and the copies wrote is logged, taken buffers or not (%i-byte buffers: %s)', async (bufferSize, _path) => {
    const saved = process.env['LGNET_IO'];
    process.env['LGNET_IO'] = 'uring';
    let bed: Bed;
    try {
      bed = await createBed({ accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC'], driver: { queueSize: 256, rxBufferSize: bufferSize } });
    } finally {
      if (saved === undefined) delete process.env['LGNET_IO'];
      else process.env['LGNET_IO'] = saved;
    }
    expect(bed.backend.io).toBe('uring');
    const log = await bed.dev.startDirtyLog();
    let frames = 0;
    for (const [size, count] of [[300, 40], [1200, 30], [300, 60], [60, 60]] as const) {
      bed.drv.receive();
      bed.drv.fillRx();
      await new Promise((r) => setTimeout(r, 20));
      const before = bed.dev.metrics().queues[0]!.frames;
      const shadow = begin(bed, log);
      const sender = udpSend(bed, 7002, size, count);
      const deadline = Date.now() + 5000;
      while (bed.dev.metrics().queues[0]!.frames - before < count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      sender.kill();
      const got = bed.dev.metrics().queues[0]!.frames - before;
      expect(got, `frames of ${size} B delivered`).toBe(count);
      frames += got;
      await new Promise((r) => setTimeout(r, 20));
      expectLogged(shadow.changedPages(), log.collect(), `${count} frames of ${size} B`);
    }
    expect(frames).toBe(190);
    const q = bed.dev.metrics().queues[0]!;
    expect(q.ioUring).toBe(1);
    expect(q.dirtyLogMissed).toBe(0);
  });
});
