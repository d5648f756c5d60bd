/**
 * Per-queue counters.
 *
 * Design: each queue's counters live in one Float64Array over a SharedArrayBuffer. The queue's worker
 * is the only writer (plain `c[M.X] += n`, no atomics on the hot path); the main thread reads a
 * snapshot at any time for metrics() or the metrics endpoint. A reader may see a burst half-counted;
 * it never sees a torn number (aligned 8-byte stores are atomic on the hosts lgnet supports), and
 * doubles count exactly up to 2^53.
 *
 * Every drop path increments one reason counter, so that `frames + sum(drops)` accounts for every
 * chain the device consumed. Tests assert deltas.
 */

/** Counter indices. */
export const M = {
  /** Frames moved (TX: sent to the backend; RX: delivered to the guest). */
  frames: 0,
  /** Bytes moved, frame bytes only (no virtio_net_hdr). */
  bytes: 1,
  /** Service iterations that moved at least one chain. */
  bursts: 2,
  /** Kick eventfd wake-ups. */
  kicks: 3,
  /** Call eventfd writes (interrupts raised). */
  interrupts: 4,
  /** Completions published without an interrupt because the driver did not ask for one. */
  interruptsSuppressed: 5,
  /** Times the worker went to sleep. */
  sleeps: 6,
  /** Nanoseconds spent blocked. */
  blockedNs: 7,
  /** Busy-poll rounds that found work before sleeping. */
  busyPollHits: 8,
  // TX drops: chain completed with 0 and not sent.
  txDropShort: 9,
  txDropTooBig: 10,
  txDropGsoNotNegotiated: 11,
  txDropCsumOutOfRange: 12,
  txDropCsumNotNegotiated: 13,
  txDropWritable: 14,
  txDropGsoWithoutCsum: 15,
  /** The backend refused the frame (e.g. the kernel rejected its vnet header). */
  txDropBackend: 16,
  /** Filter hook said deny. */
  txDropFiltered: 17,
  // RX.
  /** Times RX stopped because the guest had no buffers (frames wait in the backend). */
  rxNoBuffers: 18,
  /** RX chain shorter than the virtio_net_hdr: completed with 0. On the io_uring path also a chain given
   *  back empty because the frame read after it was too long for it (frames keep their order; rare). */
  rxDropShortBuffer: 19,
  /** Frame larger than the buffers offered: consumed from the backend and counted, not delivered. */
  rxDropTooBig: 20,
  /** Frame dropped by the RX filter (control-queue rx mode, MAC table, VLAN). */
  rxDropFiltered: 21,
  /** The backend read failed. */
  rxDropBackend: 22,
  /** The ring was found broken (a VringError): the queue stopped. */
  queueBroken: 23,
  /** Frames the filter hook handed to the host instead of the peer. */
  txHost: 24,
  /** TX chains consumed and discarded because the ring is started but disabled (vhost-user "Ring states"). */
  txDropDisabled: 25,
  /** Chains taken up again from the vhost-user inflight record when the queue started. */
  inflightResubmitted: 26,
  /** TX chain in more memory pieces than one frame's writev takes (64): completed with 0, not sent. */
  txDropTooManyPieces: 27,
  /** RX chain in more memory pieces than one frame's readv takes (256): completed with 0, unused. */
  rxDropTooManyPieces: 28,
  /** Frames written to the pcap capture. */
  captured: 29,
  /** Of the captured frames, those whose write to the pcap file failed or was cut short (disk full, a bad fd). */
  captureFailed: 30,
  /** Times the queue stopped a burst for its rate limit and slept until the buckets refilled. */
  throttled: 31,
  /** errno of the last backend failure counted in txDropBackend or rxDropBackend (0: none yet). */
  backendErrno: 32,
  /** Guest pages written while dirty logging was on that lay beyond the end of the log (so not marked). */
  dirtyLogMissed: 33,
  /** Times a queue started where its ring shows the device stopped, not at the front-end's base, which
   *  the ring contradicted: a packed ring under QEMU 7.2 after a back-end crash (vring/packed-resume.ts),
   *  a split ring under DPDK's virtio-user after its back-end reconnected (SplitQueue.resume). */
  ringBaseRecovered: 34,
  /** Times the queue found its guest memory shrunk under it (native/guard.cc): it stopped, NEEDS_RESET. */
  memoryFaults: 35,
  /** Not a counter: 1 when this queue's tap I/O goes through io_uring (one io_uring_enter per burst),
   *  0 for readv/writev per frame or a backend without tap I/O. Set when the queue starts. */
  ioUring: 36,
  /** Interrupts a busy queue held back for coalescing (device/coalesce.ts): each went out, if the driver
   *  still wanted it, within the coalescing delay, together with the completions that came meanwhile. */
  interruptsHeld: 37,
  /** Not a counter: RX chains the device holds popped and unused between bursts (device/rx.ts keeps
   *  them for the next frame instead of popping them again; given back to the ring at stop or pause). */
  rxKept: 38,
  /** Frames read from the backend ahead of the guest's buffers (the io_uring stage) and dropped when the
   *  queue stopped before buffers came for them. */
  rxDropStopped: 39,
  /** Frames the backend held for this queue's pair when the pair went out of use (a multi-queue tap's
   *  queue detached, which would discard them unseen): read out and dropped, so that they are counted.
   *  Written by the thread that steers the backend, never by the queue's worker. */
  rxDropDetached: 40,
  /** Behind an IOMMU: times the queue found no IOTLB mapping for a buffer and asked the front-end for
   *  one (the chain waits in the ring meanwhile; vring/iotlb.ts). */
  iotlbMisses: 41,
  /** Count of counters. */
  COUNT: 42,
} as const;

export type MetricName = Exclude<keyof typeof M, 'COUNT'>;

const NAMES = Object.keys(M).filter((k) => k !== 'COUNT') as MetricName[];

/** TX_DROP code (header.ts) → counter index. */
export const TX_DROP_COUNTER: readonly number[] = [
  -1, M.txDropShort, M.txDropTooBig, M.txDropGsoNotNegotiated, M.txDropCsumOutOfRange,
  M.txDropCsumNotNegotiated, M.txDropWritable, M.txDropGsoWithoutCsum, M.txDropTooManyPieces,
];

/** Allocates the shared storage for one queue's counters. */
export function createCounters(): Float64Array {
  return new Float64Array(new SharedArrayBuffer(M.COUNT * 8));
}

/** A plain-object snapshot, for logs, tests and the metrics endpoint. */
export type QueueMetrics = Record<MetricName, number>;

/** Copies the counters into a plain object. */
export function snapshot(c: Float64Array): QueueMetrics {
  const out = {} as QueueMetrics;
  for (const n of NAMES) out[n] = c[M[n]]!;
  return out;
}
