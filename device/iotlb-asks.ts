/**
 * Behind an IOMMU: what a queue asks the owner for when its next chain has no mapping, and when it asks
 * again (docs/ARCHITECTURE.md, "Behind an IOMMU"). One per queue: a data queue's loop (loops.ts) and the
 * control queue's (ctrl-loop.ts) each hold one.
 *
 * It asks for every page of the buffer the walk stopped in that has no mapping, not the first alone: a
 * 64 KiB segment spans 17 pages, and one at a time made that 17 round trips to the front-end. Pages
 * beyond the buffer are never asked for: the guest may not have mapped them, and a vIOMMU reports a
 * fault to the guest for each.
 *
 * A page already asked for is asked again only after IOTLB_RETRY_MS, while its answer may still be on
 * the way: an answer meant for another page or queue wakes every waiting queue and must not bring more
 * questions. The slate is clean again once the ring has moved on (a guest that unmaps each buffer after
 * use hands the same IOVA out again at once) or the table lost mappings since (Iotlb.drops: a guest's
 * lazy flush empties the table every few milliseconds, between the answers for one chain's
 * descriptors). Neither is brought about by an answer, so answers cannot breed questions.
 */
import type { Iotlb } from '../vring/index.ts';

/** How long a queue waits for an IOTLB mapping before it asks again (a miss message may be lost with a front-end that restarts). */
export const IOTLB_RETRY_MS = 200;
/** The IOTLB's page: what a miss names and a vIOMMU answers at the least. */
const PAGE = 4096;
/** Pages of one buffer asked for together at most (1 MiB): a bound on one miss's messages. */
const MAX_ASK_PAGES = 256;
/** Asks remembered at one ring position at most, before the memory is dropped. */
const MAX_ASKED = 4096;

export class IotlbAsks {
  /** Pages asked for at ring position `at`, with the table's drops at `drops`: page * 4 + access → when (ms). */
  private readonly asked = new Map<number, number>();
  private at = -1;
  private drops = -1;

  /**
   * After `t` missed (its miss* fields): report each page of the missing buffer to ask for now.
   * `position` is the ring's next position (DeviceQueue.lastAvail), `now` performance.now().
   * Returns how many were reported.
   */
  ask(t: Iotlb, position: number, now: number, report: (iova: number, access: number) => void): number {
    const drops = t.drops;
    if (position !== this.at || drops !== this.drops || this.asked.size > MAX_ASKED) {
      this.asked.clear();
      this.at = position;
      this.drops = drops;
    }
    const access = t.missAccess;
    const first = Math.floor(t.missIova / PAGE);
    const last = Math.min(Math.ceil(t.missEnd / PAGE) - 1, first + MAX_ASK_PAGES - 1);
    let n = 0;
    for (let p = first; p <= last; p++) {
      if (p !== first && t.has(p * PAGE)) continue;
      const key = p * 4 + access;
      const when = this.asked.get(key);
      if (when !== undefined && now - when < IOTLB_RETRY_MS) continue;
      this.asked.set(key, now);
      n++;
      report(p === first ? t.missIova : p * PAGE, access);
    }
    return n;
  }
}
