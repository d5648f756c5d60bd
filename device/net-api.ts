/**
 * The shapes of the embedding API: what a VMM passes to NetDevice (options, memory regions, queue
 * setups) and what it reads back (metrics). Kept apart from net.ts, the device model, so that the
 * contract reads on one page; net.ts re-exports every name.
 */
import type { Backend } from './backend.ts';
import type { QueueMetrics } from './metrics.ts';
import type { DeviceCoalesce } from './coalesce.ts';
import type { RateLimit } from './rate-limit.ts';
import type { WorkerInspection } from './worker-protocol.ts';

/** Options of {@link NetDevice}. */
export interface NetDeviceOptions {
  /** The backend frames go to and come from. The device closes it in close(). */
  backend: Backend;
  /**
   * MAC address, "52:54:00:12:34:56" or 6 bytes. Default: the backend's `guestAddress` (a macvtap's
   * own), else a random locally administered one.
   */
  mac?: string | Uint8Array;
  /** MTU reported in config (VIRTIO_NET_F_MTU). Default 1500. */
  mtu?: number;
  /** Queue pairs (≤ the backend's). Default: the backend's. */
  queuePairs?: number;
  /** Features to offer; trimmed to what the backend supports. Default DEFAULT_OFFERED. */
  features?: bigint;
  /** Chains per burst. Default DEFAULT_BURST (64). */
  burst?: number;
  /**
   * Microseconds a worker keeps re-checking its ring (and backend) before it signals and sleeps; work
   * that arrives meanwhile joins the same burst and interrupt. 0 turns busy polling off. Default 0.
   */
  busyPoll?: number;
  /**
   * Interrupt coalescing of the data queues (device/coalesce.ts): an RX (TX) queue that decided an
   * interrupt less than `rxUsecs` (`txUsecs`) µs ago holds the next one until then, or until `buffers`
   * used buffers are pending; a queue quiet for that long signals at once. 0 turns it off for that
   * direction. Default DEFAULT_COALESCE ({ rxUsecs: 2000, txUsecs: 4000, buffers: 64 }); a field left
   * out takes its default.
   */
  coalesce?: Partial<DeviceCoalesce>;
  /**
   * CPUs the data queue workers run on, one per queue pair in turn (as DPDK gives each lcore its
   * queues): pair p's RX and TX workers both run on `cpus[p % cpus.length]`, so that the wake-up from
   * the TX worker's write to the RX worker that reads the answer stays on one CPU. Each must be a CPU
   * this process may use. Default: not pinned (the scheduler places every worker).
   */
  cpus?: readonly number[];
  /** Largest queue size the device accepts. Default 1024. */
  maxQueueSize?: number;
  /**
   * pcap capture (device/capture.ts): the fd of a file openPcap() prepared, and which data queues
   * to capture (default all). The embedder closes the fd after close().
   */
  capture?: { fd: number; snaplen?: number; queues?: readonly number[] };
  /**
   * Rate limits (device/rate-limit.ts): token buckets for bytes and frames, each RX and each TX
   * queue with buckets of its own. Default none.
   */
  rateLimit?: { rx?: RateLimit; tx?: RateLimit };
}

/** A guest memory region handed to the device as an fd (memfd, or what the VMM sent). */
export interface MemoryRegionSpec {
  /** Guest physical address. */
  gpa: number;
  size: number;
  /** The fd to map (MAP_SHARED); the caller keeps ownership. */
  fd: number;
  /** Offset into the fd. Default 0. */
  mmapOffset?: number;
  /** The VMM's virtual address of the region (vhost-user ring addresses use it). */
  uaddr?: number;
  /**
   * The region is one of the current ones, given again with the same fd, which the caller kept open:
   * its mapping stays where it is instead of being made again. A region that matches none (gpa, size,
   * offset, uaddr and fd) is mapped as usual. Postcopy migration needs this: the front-end was told
   * where each mapping is, and adding a region must not move the others.
   */
  keep?: boolean;
}

/** Where a virtqueue lives and how it signals. */
export interface QueueSetup {
  size: number;
  /** Guest physical addresses of the three ring areas. */
  desc: number;
  avail: number;
  used: number;
  /** Eventfd the driver writes to kick; -1 for none (the worker then polls on a timeout). */
  kickFd: number;
  /** Eventfd the device writes to interrupt; -1 for none. */
  callFd: number;
  /** Next avail index to process (vhost-user SET_VRING_BASE). Default 0. */
  lastAvail?: number;
  /**
   * A TX ring that is started but disabled (vhost-user "Ring states"): its chains are consumed and
   * discarded, counted as txDropDisabled, never sent. Not allowed on an RX queue (a disabled RX ring
   * supplies nothing, so it is simply not started).
   */
  discard?: boolean;
  /**
   * vhost-user inflight tracking: this queue's region of the shared inflight buffer, in a native
   * mapping (inflightQueueRegionSize(size) bytes at `offset`). Pops and completions are recorded
   * there, and chains a previous back-end left in flight are taken up first when the queue starts.
   */
  inflight?: { mappingId: number; offset: number };
  /**
   * Where the used ring's writes are logged while dirty logging is on (live migration): a guest
   * physical address, or null for not at all (vhost-user: SET_VRING_ADDR without VHOST_VRING_F_LOG).
   * Default `used`.
   */
  logUsed?: number | null;
}

/**
 * The dirty log's memory, as an fd the device maps (memfd, or what the VMM sent with SET_LOG_BASE):
 * `size` bytes at `offset`, one bit per 4 KiB guest page (vring's dirtyLogSize() says how many bytes
 * guest memory needs). The caller keeps the fd.
 */
export interface DirtyLogSpec {
  fd: number;
  size: number;
  offset?: number;
}

/** Per-queue and device metrics. */
export interface DeviceMetrics {
  queues: Array<{ index: number; role: 'rx' | 'tx' | 'ctrl'; running: boolean; broken: string | null } & QueueMetrics>;
  ctrl: { commands: number; errors: number };
}

/**
 * One queue as NetDevice.inspect() found it: its worker's answer (the ring read between two passes),
 * or why there is none.
 */
export interface QueueInspection extends Omit<WorkerInspection, 'state'> {
  index: number;
  role: 'rx' | 'tx' | 'ctrl';
  /** WorkerInspection's states; 'stopped': the queue is not started (nothing asked); 'unanswered': its
   *  worker did not answer in time (it is stuck in a pass: a bug to report, with this document). */
  state: WorkerInspection['state'] | 'stopped' | 'unanswered';
}
