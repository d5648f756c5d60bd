/**
 * The per-virtqueue worker thread (lguest's `do_thread`): one per data queue, looping
 *
 *   service one burst ─▶ more? ──yes──▶ (signal if many pending) ─▶ service again
 *                         │no
 *                         ▼
 *   signal pending used ─▶ bounded busy-poll ─▶ re-enable notifications ─▶ re-check ─▶ block
 *                                                                  (one native call: fence, re-read, sleep)
 *
 * It blocks in native code on its kick eventfd, its control eventfd, and for RX the backend's fd.
 * Workers are started when the device is created (before a jail forbids loading code) and sit idle
 * until a queue is configured on them; stopping a queue returns its worker to idle. The main thread
 * drives a worker by posting a message on `control` and writing the control eventfd; the worker reads
 * messages synchronously (receiveMessageOnPort), since it is never in the JS event loop while serving.
 *
 * A ring the guest broke (VringError) is reported once and the worker stops touching that queue; it
 * stays alive waiting for stop or reset, so a hostile guest cannot crash or spin the process.
 */
import { isMainThread, receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import * as native from '../native/index.ts';
import { LgnetError } from '../errors/index.ts';
import { GuestMemory, InflightLog, SplitQueue, inflightQueueRegionSize } from '../vring/index.ts';
import type { PortSpec } from './backend.ts';
import { decode } from './features.ts';
import { PcapWriter, type CaptureSpec } from './capture.ts';
import { PendingUsed } from './interrupt.ts';
import { RateLimiter, type RateLimit } from './rate-limit.ts';
import { M } from './metrics.ts';
import { NET_ERROR } from './errors.ts';
import { RX, RxService } from './rx.ts';
import { RxFilter } from './rx-filter.ts';
import { loadFilter, openPairPorts, type FilterRef, type FrameFilter } from './pair-backend.ts';
import { openTapPorts } from './tap-backend.ts';
import { TxService } from './tx.ts';

/** A region of guest memory as a worker receives it: a mapping id from the native registry. */
export interface WorkerRegion {
  gpa: number;
  size: number;
  mappingId: number;
  mappingOffset: number;
  uaddr?: number;
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
  mtu: number;
  filter: FilterState;
}

/** Main thread → worker. */
export type WorkerCommand =
  | { cmd: 'configure'; config: QueueConfig }
  | { cmd: 'pause' }
  | { cmd: 'resume'; regions?: WorkerRegion[] }
  | { cmd: 'stop' }
  | { cmd: 'filter'; filter: FilterState }
  | { cmd: 'seccomp'; program: Uint8Array }
  | { cmd: 'exit' };

/** Worker → main thread. */
export type WorkerEvent =
  | { ev: 'idle' }
  | { ev: 'running' }
  | { ev: 'paused'; lastAvail: number }
  | { ev: 'stopped'; lastAvail: number }
  | { ev: 'broken'; code: string; message: string }
  | { ev: 'sealed'; error?: { code: string; message: string } };

/** How long one sleep lasts at most; the loop re-checks after it, so a lost wake-up costs this, not a hang. */
const SLEEP_MS = 1000;

const State = { IDLE: 0, RUNNING: 1, PAUSED: 2, BROKEN: 3, EXIT: 4 } as const;

/** Builds a GuestMemory over the native mappings, with views owned by this thread. */
export function memoryFromMappings(regions: WorkerRegion[]): GuestMemory {
  return new GuestMemory(regions.map((r) => ({
    gpa: r.gpa,
    size: r.size,
    buffer: native.mappingBuffer(r.mappingId),
    bufferOffset: r.mappingOffset,
    mappingId: r.mappingId,
    mappingOffset: r.mappingOffset,
    ...(r.uaddr !== undefined ? { uaddr: r.uaddr } : {}),
  })));
}

/** Applies a FilterState to an RxFilter. */
export function applyFilter(f: RxFilter, s: FilterState): void {
  f.promisc = s.promisc; f.allmulti = s.allmulti; f.alluni = s.alluni;
  f.nomulti = s.nomulti; f.nouni = s.nouni; f.nobcast = s.nobcast;
  f.vlanFiltering = s.vlanFiltering;
  f.mac.set(s.mac); f.uni = s.uni; f.multi = s.multi; f.vlans.set(s.vlans);
}

/** A configured queue: the ring, its memory and the service that moves frames. */
class ActiveQueue {
  readonly cfg: QueueConfig;
  readonly queue: SplitQueue;
  readonly pending: PendingUsed;
  /** Fds to sleep on while waiting for the backend: ctl first, then the backend's fd (RX). */
  readonly waitFds: Int32Array;
  tx: TxService | undefined;
  rx: RxService | undefined;
  availMapping = -1;
  availOffset = 0;
  private readonly role: 'rx' | 'tx';
  private readonly c: Float64Array;
  private readonly rxFilter: RxFilter;
  private readonly frameFilter: FrameFilter | undefined;
  private capture: PcapWriter | undefined;
  private readonly limiter: RateLimiter | undefined;

  constructor(role: 'rx' | 'tx', cfg: QueueConfig, ctlFd: number, c: Float64Array, rxFilter: RxFilter, frameFilter: FrameFilter | undefined) {
    this.role = role;
    this.cfg = cfg;
    this.c = c;
    this.rxFilter = rxFilter;
    this.frameFilter = frameFilter;
    const f = decode(cfg.features);
    const r = cfg.ring;
    this.queue = new SplitQueue({ size: r.size, desc: r.desc, avail: r.avail, used: r.used, eventIdx: f.eventIdx, indirect: f.indirect });
    this.pending = new PendingUsed(this.queue, cfg.callFd, c);
    const ports = this.openPorts();
    this.waitFds = role === 'rx' ? Int32Array.of(ctlFd, ports.rx.fd) : Int32Array.of(ctlFd);
    if (cfg.rateLimit) this.limiter = new RateLimiter(cfg.rateLimit);
    this.bind(cfg.regions);
    this.queue.setBase(r.lastAvail);
    if (cfg.inflight) {
      const bytes = new Uint8Array(native.mappingBuffer(cfg.inflight.mappingId), cfg.inflight.offset, inflightQueueRegionSize(r.size));
      this.queue.setInflight(new InflightLog(bytes, r.size));
      c[M.inflightResubmitted]! += this.queue.recoverInflight().heads.length;
    }
  }

  private openPorts() {
    const spec = this.cfg.port;
    return spec.kind === 'tap' ? openTapPorts(spec) : openPairPorts(spec, this.frameFilter, this.c);
  }

  /** (Re)binds the ring and the services to memory; a ring that no longer fits throws. */
  bind(regions: WorkerRegion[]): void {
    const mem = memoryFromMappings(regions);
    this.queue.attach(mem);
    const loc = this.queue.availIdxLocation();
    this.availMapping = loc.mappingId;
    this.availOffset = loc.mappingOffset + loc.offset;
    const f = decode(this.cfg.features);
    const ports = this.openPorts();
    if (this.cfg.capture) {
      this.capture ??= new PcapWriter(this.cfg.capture, mem, this.c, this.cfg.burst);
      this.capture.mem = mem;
    }
    const opts = { burst: this.cfg.burst, ...(this.capture ? { capture: this.capture } : {}), ...(this.limiter ? { limiter: this.limiter } : {}) };
    if (this.role === 'tx') this.tx = new TxService(this.queue, mem, f, ports.tx, this.pending, this.c, { ...opts, backendHdrLen: f.hdrLen, discard: this.cfg.discard });
    else this.rx = new RxService(this.queue, mem, f, ports.rx, this.pending, this.c, this.rxFilter, { ...opts, mtu: this.cfg.mtu });
  }

  /** Releases what the queue holds beyond its ring (the capture's header mapping). */
  dispose(): void {
    this.capture?.close();
    this.capture = undefined;
  }
}

/** The worker's loop and state machine; exported so that it can be read and driven as a unit. */
export class QueueWorker {
  private readonly boot: WorkerBoot;
  private readonly c: Float64Array;
  private readonly port: MessagePort;
  private readonly rxFilter = new RxFilter();
  private readonly ctlOnly: Int32Array;
  private readonly frameFilter: FrameFilter | undefined;
  private state: number = State.IDLE;
  private q: ActiveQueue | null = null;

  constructor(boot: WorkerBoot, frameFilter?: FrameFilter) {
    this.boot = boot;
    this.c = boot.counters;
    this.port = boot.control;
    this.frameFilter = frameFilter;
    this.ctlOnly = Int32Array.of(boot.ctlFd);
  }

  /** Runs until told to exit. */
  run(): void {
    this.post({ ev: 'idle' });
    const flag = this.boot.ctlFlag;
    while (this.state !== State.EXIT) {
      // A busy worker never sleeps on its control fd: look at the flag on every pass (no syscall).
      if (Atomics.load(flag, 0) !== 0) this.control();
      if (this.state !== State.RUNNING) {
        native.poll(this.ctlOnly, SLEEP_MS);
        this.control();
        continue;
      }
      try {
        this.serve(this.q!);
      } catch (e) {
        this.fail(e);
      }
    }
  }

  /** One pass: a burst, and a sleep if there was nothing to do. */
  private serve(a: ActiveQueue): void {
    const q = a.queue;
    if (a.tx) {
      if (a.tx.processTx() > 0) {
        if (a.pending.pending >= q.size >>> 2) a.pending.signal();
        return;
      }
      if (a.tx.throttledMs > 0) {
        this.throttle(a, a.tx.throttledMs);
        return;
      }
      if (this.busyPoll(a, () => q.availPending() > 0)) return;
      this.sleepOnKick(a, q.lastAvail);
      return;
    }
    const r = a.rx!.processRx();
    if (r === RX.THROTTLED) {
      this.throttle(a, a.rx!.throttledMs);
      return;
    }
    if (r === RX.MORE) {
      if (a.pending.pending >= q.size >>> 2) a.pending.signal();
      return;
    }
    if (r === RX.BACKEND_EMPTY) {
      // Frames arriving within the busy-poll window join this burst's interrupt; then lguest's rule:
      // completions go to the guest before the backend read would block.
      if (this.busyPoll(a, () => native.poll(a.waitFds, 0) !== 0 || Atomics.load(this.boot.ctlFlag, 0) !== 0)) return;
      a.pending.signal();
      this.sleep(a.waitFds);
      return;
    }
    // No room: the guest refills only once it hears about what it got, so signal first; then wait
    // for buffers newer than what is in the ring now.
    a.pending.signal();
    const seen = q.availIdx();
    if (this.busyPoll(a, () => q.availIdx() !== seen)) return;
    this.sleepOnKick(a, seen);
  }

  /**
   * The rate limit stopped the burst: what was done goes to the guest, then the worker sleeps until
   * the buckets refill (a command on the control fd still wakes it). Work stays in the ring or tap.
   */
  private throttle(a: ActiveQueue, ms: number): void {
    a.pending.signal();
    this.c[M.throttled]! += 1;
    const t0 = performance.now();
    native.poll(this.ctlOnly, Math.min(Math.ceil(ms), SLEEP_MS));
    this.c[M.blockedNs]! += (performance.now() - t0) * 1e6;
  }

  /**
   * Re-checks `ready` for up to the configured number of microseconds before the worker sleeps. The
   * pending interrupt is held meanwhile, so work that arrives in the window shares it, and the driver
   * does not kick (notifications stay off).
   */
  private busyPoll(a: ActiveQueue, ready: () => boolean): boolean {
    const us = a.cfg.busyPoll;
    if (us <= 0) return false;
    const end = performance.now() + us / 1000;
    do {
      if (ready()) {
        this.c[M.busyPollHits]! += 1;
        return true;
      }
    } while (performance.now() < end);
    return false;
  }

  /**
   * Sleeps until the driver adds buffers past `seen`: signal pending used, re-enable notifications,
   * and let native fence, re-read avail.idx and block, so no kick can fall between check and sleep.
   */
  private sleepOnKick(a: ActiveQueue, seen: number): void {
    const q = a.queue;
    const signalFd = a.pending.take();
    if (q.enableNotification(seen)) {
      q.disableNotification();
      if (signalFd >= 0) native.eventfdWrite(signalFd, 1);
      return;
    }
    const t0 = performance.now();
    this.c[M.sleeps]! += 1;
    const woke = native.waitKick(a.cfg.kickFd, a.availMapping, a.availOffset, seen & 0xffff, SLEEP_MS, this.ctlOnly, signalFd);
    this.c[M.blockedNs]! += (performance.now() - t0) * 1e6;
    q.disableNotification();
    if (woke & native.WAKE.KICK) this.c[M.kicks]! += 1;
    if (woke & native.WAKE.EXTRA0) this.control();
  }

  /** Sleeps on fds (RX waiting for the backend), ctl first. */
  private sleep(fds: Int32Array): void {
    const t0 = performance.now();
    this.c[M.sleeps]! += 1;
    const ready = native.poll(fds, SLEEP_MS);
    this.c[M.blockedNs]! += (performance.now() - t0) * 1e6;
    if (ready & 1) this.control();
  }

  /** Drains the control eventfd and handles every queued command. */
  private control(): void {
    Atomics.store(this.boot.ctlFlag, 0, 0);
    native.eventfdRead(this.boot.ctlFd);
    for (;;) {
      const m = receiveMessageOnPort(this.port);
      if (!m) return;
      this.command(m.message as WorkerCommand);
    }
  }

  private command(m: WorkerCommand): void {
    switch (m.cmd) {
      case 'configure':
        this.q?.dispose();
        this.q = null;
        applyFilter(this.rxFilter, m.config.filter);
        try {
          this.q = new ActiveQueue(this.boot.role, m.config, this.boot.ctlFd, this.c, this.rxFilter, this.frameFilter);
          this.state = State.RUNNING;
          this.post({ ev: 'running' });
        } catch (e) {
          this.state = State.RUNNING; // so that fail() reports it
          this.fail(e);
        }
        return;
      case 'pause':
        if (this.state === State.RUNNING) this.quiesce();
        if (this.state === State.RUNNING) this.state = State.PAUSED;
        this.post({ ev: 'paused', lastAvail: this.q?.queue.lastAvail ?? 0 });
        return;
      case 'resume':
        if (this.state !== State.PAUSED || !this.q) return;
        try {
          if (m.regions) this.q.bind(m.regions);
          this.state = State.RUNNING;
        } catch (e) {
          this.state = State.RUNNING;
          this.fail(e);
        }
        return;
      case 'stop':
        if (this.state === State.RUNNING) this.quiesce();
        this.post({ ev: 'stopped', lastAvail: this.q?.queue.lastAvail ?? 0 });
        this.q?.dispose();
        this.q = null;
        this.state = State.IDLE;
        return;
      case 'filter':
        applyFilter(this.rxFilter, m.filter);
        return;
      case 'seccomp':
        // The sandbox's narrower filter for this thread alone (stacked on the process-wide one).
        try {
          native.seccompInstall(m.program, { tsync: false });
          this.post({ ev: 'sealed' });
        } catch (e) {
          this.post({ ev: 'sealed', error: { code: (e as { code?: string }).code ?? 'ERROR', message: (e as Error).message } });
        }
        return;
      case 'exit':
        if (this.state === State.RUNNING) this.quiesce();
        this.q?.dispose();
        this.q = null;
        this.state = State.EXIT;
        return;
    }
  }

  /** Publishes what is done and raises the pending interrupt, so nothing is left half-signalled. */
  private quiesce(): void {
    try {
      this.q?.pending.signal();
    } catch (e) {
      this.fail(e);
    }
  }

  private fail(e: unknown): void {
    if (this.state === State.BROKEN) return;
    this.state = State.BROKEN;
    this.c[M.queueBroken]! += 1;
    const code = e instanceof LgnetError ? e.code : NET_ERROR.WORKER_ERROR;
    const message = e instanceof Error ? e.message : String(e);
    this.post({ ev: 'broken', code, message });
  }

  private post(e: WorkerEvent): void {
    this.port.postMessage(e);
  }
}

if (!isMainThread && (workerData as { lgnetQueueWorker?: boolean } | null)?.lgnetQueueWorker) {
  const boot = workerData as WorkerBoot;
  // The filter hook is a module the worker loads itself (functions cannot cross threads).
  void loadFilter(boot.frameFilter).then(
    (filter) => new QueueWorker(boot, filter).run(),
    (e: Error) => boot.control.postMessage({ ev: 'broken', code: 'LGNET_FILTER_LOAD', message: e.message } satisfies WorkerEvent),
  );
}
