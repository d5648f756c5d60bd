/**
 * The worker protocol: what crosses between NetDevice's main thread (worker-host.ts) and a queue's
 * worker thread (worker.ts). Off the frame path: these messages start, pause, resume and stop the
 * service loops (loops.ts), which then move frames without talking to the main thread at all.
 *
 *   main thread                                         worker thread
 *   ───────────                                         ─────────────
 *   workerData: WorkerBoot ───────────────────────────▶ (starts idle)        ◀── { ev: 'idle' }
 *   { cmd: 'configure', config: QueueConfig } ────────▶ opens ports, builds the loop ◀── 'running' | 'broken'
 *   { cmd: 'pause' }                          ────────▶ quiesces              ◀── 'paused' (lastAvail)
 *   { cmd: 'resume', regions? }               ────────▶ rebinds memory, serves on
 *   { cmd: 'filter', filter }                 ────────▶ RX filter update
 *   { cmd: 'rate', limit }                    ────────▶ new rate limit (null: none) ◀── 'rated'
 *   { cmd: 'log', log }                       ────────▶ dirty logging on/off  ◀── 'logging'
 *   { cmd: 'call', fd }                       ────────▶ new call eventfd       ◀── 'call'
 *   { cmd: 'missSink', sink }                 ────────▶ where misses go        ◀── 'missSink'
 *   { cmd: 'memory', ids }                    ────────▶ wraps the guest mappings now, forgets others
 *   { cmd: 'stop' }                           ────────▶ quiesces, back to idle ◀── 'stopped' (lastAvail)
 *   { cmd: 'seccomp', program }               ────────▶ installs its filter    ◀── 'sealed'
 *   { cmd: 'inspect' }                        ────────▶ reads its ring         ◀── 'inspect'
 *   { cmd: 'exit' }                           ────────▶ ends the thread
 *
 * Every command goes on the worker's MessagePort, then sets `ctlFlag` (seen by a busy worker on its next
 * pass, no syscall) and writes the control eventfd (wakes a sleeping one). Everything here survives
 * structured clone: fds are numbers (threads share the fd table), memory is named by mapping id.
 */
import type { MessagePort } from 'node:worker_threads';
import * as native from '../native/index.ts';
import { GuestMemory } from '../vring/index.ts';
import type { PortSpec } from './backend.ts';
import type { CaptureSpec } from './capture.ts';
import type { FilterRef } from './backend.ts';
import type { RateLimit } from './rate-limit.ts';
import type { CoalesceOptions } from './coalesce.ts';
import type { RxFilter } from './rx-filter.ts';
import type { IotlbMissSink } from './iotlb-asks.ts';
import type { RingInspection } from '../vring/index.ts';

/** What a queue's worker waited on in its last sleep (device/loops.ts). */
export type SleepReason = 'kick' | 'backend' | 'kick+backend' | 'throttle' | 'iotlb';

/** A queue's worker as it stands when it answers an inspection (NetDevice.inspect). */
export interface WorkerInspection {
  /** The worker's state: serving, paused (a memory change or migration), broken, or with no queue. */
  state: 'idle' | 'running' | 'paused' | 'broken';
  /** The ring, read by the worker between two passes; null with no queue, or when it cannot be read. */
  ring: RingInspection | null;
  /** Why `ring` is null, when a queue is there. */
  error?: string;
  /** What the worker waited on in its last sleep, and for how long (the command that asked woke it
   *  from there when it was asleep); null before its first sleep. */
  lastSleep: { on: SleepReason; ms: number } | null;
  /** An interrupt is held for coalescing (it goes out by its deadline). */
  interruptHeld: boolean;
}

/** A region of guest memory as a worker receives it: a mapping id from the native registry. */
export interface WorkerRegion {
  gpa: number;
  size: number;
  mappingId: number;
  mappingOffset: number;
  uaddr?: number;
}

/**
 * A queue's dirty logging (live migration) as a worker receives it: the log's bytes in a native
 * mapping, and where the used ring's writes are logged (null: not logged).
 */
export interface WorkerLog {
  mappingId: number;
  offset: number;
  size: number;
  usedGpa: number | null;
}

/** The state of the RX filter, as the control queue sets it. */
export interface FilterState {
  promisc: boolean; allmulti: boolean; alluni: boolean; nomulti: boolean; nouni: boolean; nobcast: boolean;
  vlanFiltering: boolean; mac: Uint8Array; uni: Uint8Array; multi: Uint8Array; vlans: Uint32Array;
}

/** What a worker starts with (structured-cloned; `control` is transferred). */
export interface WorkerBoot {
  lgnetQueueWorker: true;
  role: 'rx' | 'tx';
  queueIndex: number;
  ctlFd: number;
  /** Set by the main thread with each command, so a worker that never sleeps still sees it. */
  ctlFlag: Int32Array;
  counters: Float64Array;
  control: MessagePort;
  /** The pair backend's filter hook, loaded at start (a jailed worker cannot load code later). */
  frameFilter?: FilterRef;
  /** The CPU the thread pins itself to as it starts (NetDeviceOptions.cpus), or none. */
  cpu?: number;
}

/** One queue's configuration, sent when the queue starts. */
export interface QueueConfig {
  ring: { size: number; desc: number; avail: number; used: number; lastAvail: number };
  /** TX only: consume and discard (a started-but-disabled vhost-user ring). */
  discard: boolean;
  /** The queue's vhost-user inflight region (QueueSetup.inflight), or null. */
  inflight: { mappingId: number; offset: number } | null;
  /** pcap capture of this queue's frames, or null. */
  capture: CaptureSpec | null;
  /** This queue's rate limit, or null. */
  rateLimit: RateLimit | null;
  features: bigint;
  regions: WorkerRegion[];
  kickFd: number;
  callFd: number;
  port: PortSpec;
  burst: number;
  busyPoll: number;
  /** This queue's interrupt coalescing (coalesce.ts); usecs 0: off. */
  coalesce: CoalesceOptions;
  mtu: number;
  filter: FilterState;
  /** Dirty logging from the start, or null. */
  log: WorkerLog | null;
  /** Behind an IOMMU: the device's IOTLB (vring/iotlb.ts), which descriptor addresses go through; or null. */
  iotlb: SharedArrayBuffer | null;
  /** Behind an IOMMU: what the queue waits for, read by the main thread (device/iotlb-asks.ts IotlbWait). */
  iotlbWait: SharedArrayBuffer | null;
  /** Behind an IOMMU: where the worker writes its misses itself (NetDevice.setIotlbMissSink), or null. */
  missSink: IotlbMissSink | null;
}

/** Main thread → worker. */
export type WorkerCommand =
  | { cmd: 'configure'; config: QueueConfig }
  | { cmd: 'pause' }
  | { cmd: 'resume'; regions?: WorkerRegion[] }
  | { cmd: 'stop' }
  | { cmd: 'filter'; filter: FilterState }
  | { cmd: 'rate'; limit: RateLimit | null }
  | { cmd: 'log'; log: WorkerLog | null }
  /** The guest memory's mappings: wrap them now (keepGuestMappings), before a queue needs them. */
  | { cmd: 'memory'; ids: number[] }
  /** Signal interrupts on `fd` from now on (−1: none); answered once the old fd is no longer used. */
  | { cmd: 'call'; fd: number }
  /** Write misses on this sink from now on (null: post them); answered once the old one is no longer used. */
  | { cmd: 'missSink'; sink: IotlbMissSink | null }
  | { cmd: 'seccomp'; program: Uint8Array }
  /** Answer with where the queue and its ring stand (between two passes). */
  | { cmd: 'inspect' }
  | { cmd: 'exit' };

/** Worker → main thread. */
export type WorkerEvent =
  | { ev: 'idle' }
  | { ev: 'running' }
  | { ev: 'paused'; lastAvail: number }
  | { ev: 'stopped'; lastAvail: number }
  | { ev: 'logging' }
  | { ev: 'rated' }
  | { ev: 'call' }
  | { ev: 'missSink' }
  /** The backend started failing (ok false: the first drop, with its errno) or works again (ok true). */
  | { ev: 'backend'; ok: boolean; errno: number }
  /** The queue started at the position its packed ring shows, not the front-end's base (message: why). */
  | { ev: 'resumed'; lastAvail: number; message: string }
  | { ev: 'broken'; code: string; message: string }
  /** Behind an IOMMU: no mapping for `iova` (access: IOTLB_ACCESS); the queue waits for one. */
  | { ev: 'iotlbMiss'; iova: number; access: number }
  | { ev: 'sealed'; error?: { code: string; message: string } }
  | { ev: 'inspect'; inspection: WorkerInspection };

/**
 * This thread's ArrayBuffers over guest memory, by mapping id. V8 counts a wrapped mapping's whole size
 * as memory its heap keeps alive, and a wrap of more than 64 MiB makes it collect garbage on the spot
 * ("external memory pressure": 10–30 ms on a 256 MiB guest here). So each thread wraps a guest mapping
 * once, keeps it while the mapping is the device's memory, and a queue's restart reuses it.
 */
const wrapped = new Map<number, ArrayBuffer>();

/** This thread's ArrayBuffer over guest mapping `id`, wrapped on first use. */
export function guestMappingBuffer(id: number): ArrayBuffer {
  let b = wrapped.get(id);
  if (b === undefined) {
    b = native.mappingBuffer(id);
    wrapped.set(id, b);
  }
  return b;
}

/**
 * Keeps this thread's buffers over the mappings `ids` only, wrapping those it lacks now (off a queue's
 * start: the memory's arrival), and lets the others go to the garbage collector, and their mappings
 * with them. An id already unmapped is skipped.
 */
export function keepGuestMappings(ids: readonly number[]): void {
  for (const id of wrapped.keys()) if (!ids.includes(id)) wrapped.delete(id);
  for (const id of ids) {
    try {
      guestMappingBuffer(id);
    } catch (e) {
      if (!(e instanceof native.NativeError)) throw e;
    }
  }
}

/**
 * Builds a GuestMemory over the native mappings, with views owned by the calling thread: by default
 * this thread's kept buffers (a queue worker's); `wrap` another way to get them.
 */
export function memoryFromMappings(regions: WorkerRegion[], wrap: (id: number) => ArrayBuffer = guestMappingBuffer): GuestMemory {
  return new GuestMemory(regions.map((r) => ({
    gpa: r.gpa,
    size: r.size,
    buffer: wrap(r.mappingId),
    bufferOffset: r.mappingOffset,
    mappingId: r.mappingId,
    mappingOffset: r.mappingOffset,
    ...(r.uaddr !== undefined ? { uaddr: r.uaddr } : {}),
  })));
}

/** An RxFilter's state, to send (copies, so that later changes do not leak into a message). */
export function filterState(f: RxFilter): FilterState {
  return {
    promisc: f.promisc, allmulti: f.allmulti, alluni: f.alluni, nomulti: f.nomulti, nouni: f.nouni, nobcast: f.nobcast,
    vlanFiltering: f.vlanFiltering, mac: f.mac.slice(), uni: f.uni.slice(), multi: f.multi.slice(), vlans: f.vlans.slice(),
  };
}

/** Applies a received FilterState to an RxFilter. */
export function applyFilter(f: RxFilter, s: FilterState): void {
  f.promisc = s.promisc; f.allmulti = s.allmulti; f.alluni = s.alluni;
  f.nomulti = s.nomulti; f.nouni = s.nouni; f.nobcast = s.nobcast;
  f.vlanFiltering = s.vlanFiltering;
  f.mac.set(s.mac); f.uni = s.uni; f.multi = s.multi; f.vlans.set(s.vlans);
}
