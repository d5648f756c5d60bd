// vring/ring-inspection.ts — RingInspection: what DeviceQueue.inspect() returns, split or packed.
// A file of its own so that both queue classes and DeviceQueue can name it without a circle.

/**
 * One queue as the device and its ring stand at one moment, for an operator or a test to see where
 * a stalled queue waits (the counterpart of QEMU's x-query-virtio-queue-status). Positions are in the
 * ring format's form (split: free-running u16; packed: idx | wrap << 15). Read from guest memory as
 * it is, unvalidated: a hostile driver's values are shown, not trusted or acted on.
 */
export interface RingInspection {
  format: 'split' | 'packed';
  size: number;
  eventIdx: boolean;
  /** The device's next position to pop. */
  lastAvail: number;
  /** The device's next used position (staged; flush() publishes it). */
  usedIdx: number;
  /** The used position the driver can see (as of the last flush). */
  publishedUsed: number;
  /** Chains popped and not yet completed. */
  inFlight: number;
  /** The driver's producer position now: split, avail.idx; packed, the end of the run of available
   *  descriptors from lastAvail. */
  driverAvail: number;
  /** Made available and not popped: chains (split) or descriptors (packed). */
  availPending: number;
  /** The driver's event suppression: split, avail.flags and used_event; packed, flags and off_wrap. */
  driverEvent: { flags: number; event: number };
  /** The device's, as this queue wrote it: split, used.flags and avail_event; packed, flags and off_wrap.
   *  (A worker inspected between two passes is awake: its kicks are off while it works.) */
  deviceEvent: { flags: number; event: number };
  /** The used position of the last interrupt decision, or null before the first since the queue started. */
  signalledUsed: number | null;
  /** The driver's event asks for an interrupt for what is published, and none went out for it yet. A
   *  worker signals before it sleeps, so this stays true only for a held (coalesced) interrupt or a bug. */
  interruptOwed: boolean;
}
