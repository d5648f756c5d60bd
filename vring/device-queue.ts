// vring/device-queue.ts — DeviceQueue: what the device side of a virtqueue offers, split or packed.
//
// Where it sits: device/ serves a queue through this surface and need not know which ring format the
// driver negotiated (VIRTIO_F_RING_PACKED picks PackedQueue, else SplitQueue). The two differ only where
// the formats do: a position is a free-running u16 index in a split ring and `idx | wrap << 15` in a
// packed one, setBase() takes the vhost-user `num` of each, and watch() names a different u16 to sleep on.

import type { DescriptorChain } from './chain.ts';
import type { DirtyLog } from './dirty-log.ts';
import type { VringError } from './errors.ts';
import type { InflightLog, InflightRecovery } from './inflight.ts';
import type { GuestMemory } from './memory.ts';
import type { QueueWatch } from './queue.ts';
import type { RingInspection } from './ring-inspection.ts';

/** The device side of one virtqueue: SplitQueue and PackedQueue both implement it. */
export interface DeviceQueue {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  /** Next position to pop (split: free-running u16; packed: idx | wrap << 15). */
  readonly lastAvail: number;
  /** Next used position (staged) in the same form. */
  readonly usedIdx: number;
  /** Chains popped and not yet completed or rewound. */
  readonly inFlight: number;
  /** The error that broke the queue, or null. */
  readonly broken: VringError | null;
  /** True while chains taken up from the inflight record are being popped again (split only): a
   *  rewind must not reach back past a flush() then, so a device keeps no chains across bursts. */
  readonly resubmitting: boolean;
  /** Bind to guest memory (again after every memory change); validates the layout. */
  attach(mem: GuestMemory): void;
  /** vhost-user SET_VRING_BASE with that ring format's `num`. */
  setBase(num: number): void;
  /** setBase() for a front-end that may have lost the position across a back-end crash; returns null
   *  when `num` was taken as given, else why the ring's own position was taken. */
  resume(num: number): string | null;
  /** vhost-user GET_VRING_BASE's `num` in that ring format (flush first). */
  base(): number;
  /** Chains available and not popped. */
  availPending(): number;
  /** The driver's producer position: where buffers newer than those in the ring will appear. */
  availIdx(): number;
  pop(): DescriptorChain | null;
  popBurst(max: number, out: DescriptorChain[], at?: number): number;
  rewind(n: number): void;
  addUsed(head: number, len: number): void;
  flush(): void;
  needsNotification(): boolean;
  disableNotification(): void;
  /** Re-enable kicks, then re-check: true when buffers past `seen` arrived meanwhile. */
  enableNotification(seen?: number): boolean;
  /** The u16 a sleeping worker watches and its "nothing new" value (take it before enableNotification). */
  watch(seen?: number): QueueWatch;
  isInFlight(head: number): boolean;
  setInflight(log: InflightLog | null): void;
  recoverInflight(): InflightRecovery;
  setDirtyLog(log: DirtyLog | null, usedLogGpa?: number | null): void;
  logWritten(chain: DescriptorChain, len: number): void;
  reset(): void;
  /** Where the queue and its ring stand now (reads guest memory, changes nothing). Attach first. */
  inspect(): RingInspection;
}
