/**
 * One RX queue whose loop runs in the test's own thread (device/loops.ts RxLoop over RxService), over
 * real parts: a tap in a namespace (or a pair backend: rig-link.ts), the harness's driver ring in guest
 * memory shared with the native side, real eventfds. A test calls `loop.pass()` itself, and a frame observer plugged into the
 * service runs at a chosen point of a burst, so that what the driver does on another CPU can be put
 * exactly where a race would be.
 */
import * as native from '../../native/index.ts';
import type { FeatureName } from '../../device/features.ts';
import { RxLoop } from '../../device/loops.ts';
import { RxFilter } from '../../device/rx-filter.ts';
import { RxService } from '../../device/rx.ts';
import { ServiceContext } from '../../device/service.ts';
import { ethernet, mac } from '../../harness/frames.ts';
import { DriverRing } from '../../harness/virtio-net.ts';
import type { RingFormat } from '../../vring/driver-queue.ts';
import { trackBed } from '../helpers/bed.ts';
import { rigBase, type RigLink } from './rig-link.ts';

export const GUEST_MAC = mac('52:54:00:12:34:56');
const HOST_MAC = mac('02:00:00:00:00:01');

export interface RxRig {
  drv: DriverRing;
  ctx: ServiceContext<unknown>;
  loop: RxLoop;
  /** The queue's counters (device/metrics.ts M). */
  c: Float64Array;
  /** The loop's control eventfd: a write ends its next sleep at once. */
  ctlFd: number;
  /** The queue's RX filter (promiscuous, as after reset; the device's MAC is GUEST_MAC). */
  filter: RxFilter;
  /** Posts one empty buffer of each length (a slot must be free); publishes; true when the driver kicked. */
  post(lens: number[]): boolean;
  /** Free driver slots (buffers that may still be posted). */
  freeSlots(): number;
  /**
   * Puts a frame of `len` bytes (Ethernet header, and the 802.1Q tag with `vid`, included) to `dst`
   * (GUEST_MAC) where the port reads it (the tap, or the pair's ring), its payload all `seq`.
   */
  send(len: number, seq: number, dst?: Uint8Array, vid?: number): void;
  /** Takes the used entries so far: the length written, the buffer's posted length, and its first bytes (header, Ethernet header, tag, one payload byte). */
  used(): Array<{ len: number; cap: number; head: Uint8Array }>;
  close(): void;
}

/**
 * Builds the rig and tracks it (closed after the test). Features: rigFeatures(format, extra). Over
 * `link` (LinkPool) if given, else over a link of its own, closed with it.
 */
export function rxRig(opts: { format: RingFormat; size: number; slotSize: number; extra?: FeatureName[]; link?: RigLink }): RxRig {
  const { f, link, ram, drv, c, queue, pending, ports, fds, close } = rigBase(opts, 'lgrxrig', 0);
  try {
    const ctx = new ServiceContext({ queue, mem: ram.mem, f, counters: c, pending, port: ports.rx, burst: 64 });
    const filter = new RxFilter();
    filter.reset(GUEST_MAC, false);
    const loop = new RxLoop(new RxService(ctx, filter, { mtu: 1500 }), fds);
    const ctlFd = fds.ctlFd;
    const hdrLen = f.hdrLen;
    let free = opts.size;
    const capOf = new Int32Array(opts.size);
    const rig: RxRig = {
      drv, ctx: ctx as ServiceContext<unknown>, loop, c, ctlFd, filter, close,
      post(lens) {
        for (const len of lens) {
          const slot = drv.takeSlot();
          if (slot < 0) throw new Error('no free driver slot');
          free--;
          capOf[slot] = len;
          drv.slotOf[drv.q.add([], [{ addr: drv.slots[slot]!, len }])] = slot;
        }
        drv.q.publish();
        const kick = drv.q.needsKick();
        if (kick) native.eventfdWrite(drv.kickFd, 1);
        return kick;
      },
      freeSlots: () => free,
      send(len, seq, dst = GUEST_MAC, vid) {
        const body = new Uint8Array(len - 14).fill(seq & 0xff);
        if (vid !== undefined) body.set([vid >> 8, vid & 0xff, 0x88, 0xb5]);
        const fr = ethernet(dst, HOST_MAC, vid === undefined ? 0x88b5 : 0x8100, body);
        link.inject(fr);
      },
      used() {
        const out: Array<{ len: number; cap: number; head: Uint8Array }> = [];
        for (let h = drv.q.popUsed(); h >= 0; h = drv.q.popUsed()) {
          const slot = drv.slotOf[h]!;
          drv.slotOf[h] = -1;
          const len = drv.q.lastUsedLen;
          out.push({ len, cap: capOf[slot]!, head: ram.read(drv.slots[slot]!, Math.min(len, hdrLen + 19)) });
          drv.giveSlot(slot);
          free++;
        }
        return out;
      },
    };
    return trackBed(rig);
  } catch (e) {
    close();
    throw e;
  }
}
