/**
 * Behind an IOMMU, the two halves of a queue's wait (device/iotlb-asks.ts), on a real IOTLB and real
 * sockets: IotlbWait, which tells the owner's thread when a waiting queue has something to do (every
 * page it waits for mapped, or the table lost mappings since it asked), and MissReporter, which writes
 * a queue's misses on the owner's channel itself, drops one the channel cannot take now, and gives a
 * channel that fails back to the owner's thread.
 */
import { afterEach, describe, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { IotlbWait, MissReporter, type IotlbMissSink } from '../../device/iotlb-asks.ts';
import { Iotlb, IOTLB_ACCESS, IotlbMiss } from '../../vring/index.ts';

const PAGE = 4096;
const BASE = 0x10_0000_0000;

/** `t` after a lookup of [iova, end) that missed: its miss* fields say what the queue waits for. */
function missed(t: Iotlb, iova: number, end: number): Iotlb {
  expect(() => t.lookup(iova, IOTLB_ACCESS.WRITE, end)).toThrow(IotlbMiss);
  return t;
}

describe('IotlbWait', () => {
  it('a waiting queue is ready once every page of its buffer is mapped, not before; not waiting, never', () => {
    const t = new Iotlb();
    const w = new IotlbWait();
    // A buffer from the middle of one page to the start of the third.
    missed(t, BASE + 100, BASE + 2 * PAGE + 10);
    expect(w.ready(t), 'not waiting yet').toBe(false);
    w.wait(t);
    expect(w.ready(t)).toBe(false);
    t.update(BASE, PAGE, 0x7f00_0000_0000, IOTLB_ACCESS.RW);
    t.update(BASE + 2 * PAGE, PAGE, 0x7f00_0000_2000, IOTLB_ACCESS.RW);
    expect(w.ready(t), 'the middle page is still unmapped').toBe(false);
    t.update(BASE + PAGE, PAGE, 0x7f00_0000_1000, IOTLB_ACCESS.RW);
    expect(w.ready(t)).toBe(true);
    w.done();
    expect(w.ready(t)).toBe(false);
  });

  it('is ready when the table lost mappings since the wait began (the queue asks again), whatever they were', () => {
    const t = new Iotlb();
    t.update(BASE + 64 * PAGE, PAGE, 0x7f00_0000_0000, IOTLB_ACCESS.RW);
    const w = new IotlbWait();
    w.wait(missed(t, BASE, BASE + 3 * PAGE));
    expect(w.ready(t)).toBe(false);
    t.update(BASE + 65 * PAGE, PAGE, 0x7f00_0000_1000, IOTLB_ACCESS.RW); // another queue's answer
    expect(w.ready(t), 'an answer for someone else').toBe(false);
    t.invalidate(BASE + 64 * PAGE, PAGE);
    expect(w.ready(t), 'a mapping was taken back').toBe(true);
  });

  it('the worker and the main thread see one another through the shared buffer', () => {
    const t = new Iotlb();
    const worker = new IotlbWait();
    const main = new IotlbWait(worker.buffer);
    worker.wait(missed(t, BASE, BASE + 10));
    t.update(BASE, PAGE, 0x7f00_0000_0000, IOTLB_ACCESS.RW);
    expect(main.ready(new Iotlb(t.buffer))).toBe(true);
    worker.done();
    expect(main.ready(t)).toBe(false);
  });
});

describe('MissReporter', () => {
  const fds: number[] = [];
  afterEach(() => {
    for (const fd of fds.splice(0)) native.closeQuietly(fd);
  });

  /** A nonblocking socketpair; the sink writes [magic, iova u64, access u8] on one end. */
  function channel(): { sink: IotlbMissSink; peer: number } {
    const [a, b] = native.unixSocketpair();
    fds.push(a, b);
    native.setNonblocking(a, true);
    native.setNonblocking(b, true);
    const message = new Uint8Array(16);
    message[0] = 0xa5;
    return { sink: { fd: a, message, iovaAt: 4, accessAt: 12 }, peer: b };
  }

  function readMisses(peer: number): Array<{ iova: number; access: number }> {
    const buf = new Uint8Array(64 * 16);
    const n = native.fdRead(peer, buf);
    const out: Array<{ iova: number; access: number }> = [];
    for (let o = 0; o + 16 <= Math.max(n, 0); o += 16) {
      const dv = new DataView(buf.buffer, o, 16);
      expect(buf[o]).toBe(0xa5);
      out.push({ iova: dv.getUint32(4, true) + dv.getUint32(8, true) * 2 ** 32, access: buf[o + 12]! });
    }
    return out;
  }

  it('writes each miss on the sink, its IOVA (above 2^32 too) and access filled in; nothing goes to the fallback', () => {
    const { sink, peer } = channel();
    const posted: number[] = [];
    const r = new MissReporter(sink, (iova) => posted.push(iova));
    r.report(BASE + 0x1234_5000, IOTLB_ACCESS.WRITE);
    r.report(0x2000, IOTLB_ACCESS.READ);
    expect(readMisses(peer)).toEqual([{ iova: BASE + 0x1234_5000, access: IOTLB_ACCESS.WRITE }, { iova: 0x2000, access: IOTLB_ACCESS.READ }]);
    expect(posted).toEqual([]);
    expect(sink.message[0], 'the owner\'s template is left as it was').toBe(0xa5);
    expect(sink.message.slice(4).every((x) => x === 0)).toBe(true);
  });

  it('a channel that cannot take a miss now drops it (asked again later); one that failed hands misses to the fallback from then on', () => {
    const { sink, peer } = channel();
    const posted: number[] = [];
    const r = new MissReporter(sink, (iova) => posted.push(iova));
    // Fill the socket: writes then return EAGAIN, and the reporter drops the miss.
    const big = new Uint8Array(64 * 1024);
    while (native.fdWrite(sink.fd, big) > 0);
    r.report(0x3000, IOTLB_ACCESS.READ);
    expect(posted, 'a full channel is not a failed one').toEqual([]);
    native.closeQuietly(peer);
    fds.splice(fds.indexOf(peer), 1);
    r.report(0x4000, IOTLB_ACCESS.READ); // EPIPE
    r.report(0x5000, IOTLB_ACCESS.WRITE);
    expect(posted).toEqual([0x4000, 0x5000]);
  });

  it('without a sink, and after setSink(null), misses go to the fallback', () => {
    const posted: number[] = [];
    const r = new MissReporter(null, (iova) => posted.push(iova));
    r.report(0x1000, IOTLB_ACCESS.READ);
    const { sink, peer } = channel();
    r.setSink(sink);
    r.report(0x2000, IOTLB_ACCESS.READ);
    r.setSink(null);
    r.report(0x3000, IOTLB_ACCESS.READ);
    expect(posted).toEqual([0x1000, 0x3000]);
    expect(readMisses(peer).map((m) => m.iova)).toEqual([0x2000]);
  });
});
