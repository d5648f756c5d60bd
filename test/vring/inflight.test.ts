// The vhost-user inflight record (vring/inflight.ts) as a SplitQueue keeps it: pops recorded in order,
// completions cleared in two phases around used.idx, and a second back-end over the same bytes taking
// up exactly the chains the first one left, before anything new from the ring.

import { describe, expect, it } from 'vitest';

import { DescriptorChain, INFLIGHT, InflightLog, SplitQueue, inflightQueueRegionSize } from '../../vring/index.ts';
import { makeRig, type Rig } from './helpers.ts';

/** A region as the front-end would hand it over: page aligned, zero filled. */
function region(size: number): Uint8Array {
  return new Uint8Array(new ArrayBuffer(inflightQueueRegionSize(size)));
}

/** A second device-side queue over the rig's ring, as a restarted back-end would build it. */
function restart(r: Rig, base: number): SplitQueue {
  const q = new SplitQueue({ size: r.size, desc: r.layout.desc, avail: r.layout.avail, used: r.layout.used, indirect: true });
  q.attach(r.mem);
  q.setBase(base);
  return q;
}

function offer(r: Rig, n: number): number[] {
  const heads: number[] = [];
  for (let i = 0; i < n; i++) heads.push(r.d.add([], [{ addr: r.alloc(64), len: 64 }]));
  r.d.publish();
  return heads;
}

function inflightHeads(log: InflightLog): number[] {
  const out: number[] = [];
  for (let h = 0; h < log.size; h++) if (log.isInflight(h)) out.push(h);
  return out;
}

describe('InflightLog on a SplitQueue', () => {
  it('records each pop with an increasing counter and clears what a flush completed', () => {
    const r = makeRig({ size: 8 });
    const bytes = region(8);
    const log = new InflightLog(bytes, 8);
    log.init(0);
    r.q.setInflight(log);
    const heads = offer(r, 3);
    const out: DescriptorChain[] = [];
    expect(r.q.popBurst(8, out)).toBe(3);
    expect(inflightHeads(log).sort()).toEqual([...heads].sort());
    expect(heads.map((h) => log.counterOf(h))).toEqual([1, 2, 3]);
    r.q.addUsed(heads[0]!, 10);
    expect(log.isInflight(heads[0]!)).toBe(true); // staged, not published
    r.q.flush();
    expect(log.isInflight(heads[0]!)).toBe(false);
    expect(log.usedIdx).toBe(1);
    expect(log.lastBatchHead).toBe(heads[0]);
    expect(new DataView(bytes.buffer).getUint16(INFLIGHT.VERSION, true)).toBe(1);
    expect(new DataView(bytes.buffer).getUint16(INFLIGHT.DESC_NUM, true)).toBe(8);
  });

  it('a rewound chain is no longer recorded', () => {
    const r = makeRig({ size: 8 });
    const log = new InflightLog(region(8), 8);
    log.init(0);
    r.q.setInflight(log);
    const heads = offer(r, 3);
    expect(r.q.popBurst(8, [])).toBe(3);
    r.q.rewind(2);
    expect(inflightHeads(log)).toEqual([heads[0]]);
  });

  it('a restarted back-end takes up the chains the first left in flight, in pop order, then the ring', () => {
    const r = makeRig({ size: 8 });
    const bytes = region(8);
    const a = new InflightLog(bytes, 8);
    a.init(0);
    r.q.setInflight(a);
    const heads = offer(r, 5);
    const out: DescriptorChain[] = [];
    expect(r.q.popBurst(4, out)).toBe(4); // the fifth stays in the ring
    r.q.addUsed(heads[0]!, 1);
    r.q.flush();
    // The back-end dies here. The front-end restores last_avail from used.idx (1), as QEMU does.
    const q = restart(r, 1);
    q.setInflight(new InflightLog(bytes, 8));
    const rec = q.recoverInflight();
    expect(rec).toMatchObject({ heads: heads.slice(1, 4), clearedBatch: 0, initialised: false });
    expect(q.availPending()).toBe(4); // three to resubmit and the fifth
    const again: DescriptorChain[] = [];
    expect(q.popBurst(8, again)).toBe(4);
    expect(again.slice(0, 4).map((c) => c.head)).toEqual(heads.slice(1, 5));
    for (const c of again.slice(0, 4)) q.addUsed(c.head, 64);
    q.flush();
    const used: number[] = [];
    for (let u = r.d.getUsed(); u; u = r.d.getUsed()) used.push(u.head);
    expect(used).toEqual(heads); // each chain completed exactly once
    expect(q.popBurst(8, again)).toBe(0);
    expect(inflightHeads(new InflightLog(bytes, 8))).toEqual([]);
  });

  it('a batch that reached the used ring but was not cleared is cleared on recovery', () => {
    const r = makeRig({ size: 8 });
    const bytes = region(8);
    const a = new InflightLog(bytes, 8);
    a.init(0);
    r.q.setInflight(a);
    const heads = offer(r, 4);
    r.q.popBurst(4, []);
    r.q.addUsed(heads[0]!, 1);
    r.q.addUsed(heads[1]!, 1);
    r.q.flush();
    // As if the process died between the used.idx store and the clearing: entries set, used_idx behind.
    a.begin(heads[0]!);
    a.begin(heads[1]!);
    new DataView(bytes.buffer).setUint16(INFLIGHT.USED_IDX, 0, true);
    const q = restart(r, 2);
    q.setInflight(new InflightLog(bytes, 8));
    const rec = q.recoverInflight();
    expect(rec.clearedBatch).toBe(2);
    expect(rec.heads).toEqual(heads.slice(2));
    expect(new InflightLog(bytes, 8).usedIdx).toBe(2);
  });

  it('rewind reaches back into resubmitted chains in order', () => {
    const r = makeRig({ size: 8 });
    const bytes = region(8);
    const a = new InflightLog(bytes, 8);
    a.init(0);
    r.q.setInflight(a);
    const heads = offer(r, 3);
    r.q.popBurst(3, []);
    const q = restart(r, 0);
    q.setInflight(new InflightLog(bytes, 8));
    expect(q.recoverInflight().heads).toEqual(heads);
    const more = offer(r, 2);
    const out: DescriptorChain[] = [];
    expect(q.popBurst(8, out)).toBe(5);
    q.rewind(4); // two ring slots and two resubmitted chains
    expect(q.inFlight).toBe(1);
    const again: DescriptorChain[] = [];
    expect(q.popBurst(8, again)).toBe(4);
    expect(again.slice(0, 4).map((c) => c.head)).toEqual([heads[1], heads[2], ...more]);
  });

  it('a fresh region is initialised and the base given by the front-end stays', () => {
    const r = makeRig({ size: 8 });
    const heads = offer(r, 2);
    const q = restart(r, 1);
    const bytes = region(8);
    q.setInflight(new InflightLog(bytes, 8));
    expect(q.recoverInflight()).toEqual({ heads: [], clearedBatch: 0, initialised: true });
    const out: DescriptorChain[] = [];
    expect(q.popBurst(8, out)).toBe(1);
    expect(out[0]!.head).toBe(heads[1]);
  });

  it('a corrupt region (heads, batch links and flags out of range) yields only valid heads, bounded', () => {
    const bytes = region(8);
    const log = new InflightLog(bytes, 8);
    log.init(0);
    log.begin(3);
    const dv = new DataView(bytes.buffer);
    dv.setUint16(INFLIGHT.USED_IDX, 60000, true); // far behind used.idx
    dv.setUint16(INFLIGHT.LAST_BATCH_HEAD, 5, true);
    dv.setUint16(INFLIGHT.DESC + 5 * INFLIGHT.DESC_SIZE + INFLIGHT.D_NEXT, 5, true); // a loop
    dv.setUint8(INFLIGHT.DESC + 6 * INFLIGHT.DESC_SIZE, 7); // not 0 or 1
    const rec = new InflightLog(bytes, 8).recover(2);
    expect(rec.heads).toEqual([3]);
    expect(dv.getUint8(INFLIGHT.DESC + 6 * INFLIGHT.DESC_SIZE)).toBe(0);
    dv.setUint16(INFLIGHT.DESC_NUM, 16, true); // laid out for another queue size: start over
    expect(new InflightLog(bytes, 8).recover(2)).toEqual({ heads: [], clearedBatch: 0, initialised: true });
    expect(() => new InflightLog(new Uint8Array(100), 8)).toThrow(RangeError);
  });
});
