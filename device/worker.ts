/**
 * The per-virtqueue worker thread: one per data queue, started by worker-host.ts and steered by the
 * messages of worker-protocol.ts. It is the thread around a service loop (loops.ts):
 *
 *   idle ──configure──▶ running: loop.pass() over and over ──pause──▶ paused ──resume──▶ running
 *     ▲                    │  (service one burst, signal, sleep)        │
 *     └────────stop────────┴────────────────────────────────────────────┘      broken: a ring the guest broke
 *
 * On `configure` it opens the backend's ports once, builds the queue's service context (service.ts)
 * with its observers (capture, rate limit), the service (tx.ts or rx.ts) and the matching loop. It
 * blocks in native code (loops.ts, native/wait.cc) on its kick eventfd, its control eventfd, and for RX
 * the backend's fd. Workers are started when the device is created (before a jail forbids loading
 * code) and sit idle until a queue is configured on them; stopping a queue returns its worker to idle.
 * The main thread drives a worker by posting a message and writing the control eventfd; the worker
 * reads messages synchronously (receiveMessageOnPort), since it is never in the JS event loop while
 * serving.
 *
 * A ring the guest broke (VringError) is reported once and the worker stops touching that queue; it
 * stays alive waiting for stop or reset, so a hostile guest cannot crash or spin the process. So is
 * guest memory that shrank under the queue (native/guard.cc turns the SIGBUS into zero pages and a
 * count): after every pass the worker looks at the process-wide fault count (one load), and if one of
 * its mappings took a fault it stops with GuestMemoryFaultError.
 */
import { isMainThread, receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import * as native from '../native/index.ts';
import { MappingViews } from '../native/iovec.ts';
import { LgnetError } from '../errors/index.ts';
import { DirtyLog, InflightLog, inflightQueueRegionSize, Iotlb, type DeviceQueue, type RingInspection } from '../vring/index.ts';
import { decode } from './features.ts';
import { PcapWriter } from './capture.ts';
import { PendingUsed } from './interrupt.ts';
import { IotlbWait, MissReporter } from './iotlb-asks.ts';
import { RateLimiter, type RateLimit } from './rate-limit.ts';
import { M } from './metrics.ts';
import { GuestMemoryFaultError, NET_ERROR } from './errors.ts';
import { RxLoop, SLEEP_MS, TxLoop, type LoopFds } from './loops.ts';
import { RxService } from './rx.ts';
import { RxFilter } from './rx-filter.ts';
import type { FrameFilter } from './backend.ts';
import * as backends from './backends.ts';
import { createQueue, ServiceContext } from './service.ts';
import { TxService } from './tx.ts';
import {
  applyFilter, keepGuestMappings, memoryFromMappings, type QueueConfig, type WorkerBoot, type WorkerCommand, type WorkerEvent, type WorkerInspection, type WorkerLog, type WorkerRegion,
} from './worker-protocol.ts';

const State = { IDLE: 0, RUNNING: 1, PAUSED: 2, BROKEN: 3, EXIT: 4 } as const;

/** Queues let go before a start collects their garbage (QueueWorker.collect). */
const COLLECT_AFTER = 8;

/** A configured queue: the ring, its service context, and the loop that serves it. */
class ActiveQueue {
  readonly queue: DeviceQueue;
  readonly pending: PendingUsed;
  readonly loop: TxLoop | RxLoop;
  private readonly service: TxService | RxService;
  private ctx!: ServiceContext<unknown>;
  /** Why the queue started elsewhere than the front-end's base, or null (DeviceQueue.resume). */
  readonly resumed: string | null;
  private capture: PcapWriter | null = null;
  /** Views of the guest mappings for a backend that copies frames; cleared when the memory changes. */
  private readonly views = new MappingViews(native.mappingBuffer);
  /** The mappings this queue reads and writes (regions, dirty log), watched for SIGBUS faults. */
  private regions: WorkerRegion[];
  private logMapping = -1;
  private mappingIds: number[] = [];
  /** RX: drops what the port read ahead and holds (RxPort.dropHeld), returning how many. */
  private readonly dropHeld: () => number;
  private readonly counters: Float64Array;
  private readonly faults = new native.FaultWatch();
  /** Behind an IOMMU: this thread's view of the device's IOTLB, or null. */
  private readonly iotlb: Iotlb | null;
  /** Behind an IOMMU: where the queue's misses go (the owner's channel itself, or the main thread). */
  readonly misses: MissReporter;

  constructor(boot: WorkerBoot, cfg: QueueConfig, rxFilter: RxFilter, frameFilter: FrameFilter | undefined) {
    const c = boot.counters;
    const f = decode(cfg.features);
    const r = cfg.ring;
    this.queue = createQueue(f, r);
    this.pending = new PendingUsed(this.queue, cfg.callFd, c, cfg.coalesce);
    // The backend's ports, opened once for the life of this configuration.
    const ports = backends.openPorts(cfg.port, { counters: c, frameFilter, mappings: this.views });
    this.counters = c;
    const rx = ports.rx;
    this.dropHeld = boot.role === 'rx' && rx.dropHeld !== undefined ? () => rx.dropHeld!() : () => 0;
    this.regions = cfg.regions;
    this.watchMappings();
    this.iotlb = cfg.iotlb === null ? null : new Iotlb(cfg.iotlb);
    this.misses = new MissReporter(cfg.missSink, (iova, access) => boot.control.postMessage({ ev: 'iotlbMiss', iova, access } satisfies WorkerEvent));
    const mem = memoryFromMappings(cfg.regions);
    mem.setIotlb(this.iotlb);
    this.queue.attach(mem); // a ring that does not fit throws, and the queue is reported broken
    const parts = { queue: this.queue, mem, f, counters: c, pending: this.pending, burst: cfg.burst };
    const fds: LoopFds = {
      kickFd: cfg.kickFd, ctlFd: boot.ctlFd, ctlFlag: boot.ctlFlag, busyPoll: cfg.busyPoll,
      ...(this.iotlb
        ? {
            reportMiss: this.misses.report,
            ...(cfg.iotlbWait ? { iotlbWait: new IotlbWait(cfg.iotlbWait) } : {}),
          }
        : {}),
    };
    if (boot.role === 'tx') {
      const ctx = this.observed(new ServiceContext({ ...parts, port: ports.tx }), cfg);
      const tx = new TxService(ctx, { backendHdrLen: f.hdrLen, discard: cfg.discard });
      this.service = tx;
      this.loop = new TxLoop(tx, fds);
    } else {
      const ctx = this.observed(new ServiceContext({ ...parts, port: ports.rx }), cfg);
      const rx = new RxService(ctx, rxFilter, { mtu: cfg.mtu });
      this.service = rx;
      this.loop = new RxLoop(rx, fds);
    }
    // A packed ring's base from a front-end that lost it across a back-end crash is corrected from the
    // ring itself (vring/packed-resume.ts), counted, and reported for the log.
    this.resumed = this.queue.resume(r.lastAvail);
    if (this.resumed !== null) c[M.ringBaseRecovered]! += 1;
    // vhost-user inflight tracking has a layout of its own for packed rings, which lgnet does not keep.
    if (cfg.inflight && !f.packed) {
      const bytes = new Uint8Array(native.mappingBuffer(cfg.inflight.mappingId), cfg.inflight.offset, inflightQueueRegionSize(r.size));
      this.queue.setInflight(new InflightLog(bytes, r.size));
      c[M.inflightResubmitted]! += this.queue.recoverInflight().heads.length;
    }
    this.setLog(cfg.log, c);
  }

  /** Dirty logging on (over this thread's own view of the log's mapping) or off. */
  setLog(log: WorkerLog | null, c: Float64Array): void {
    this.logMapping = log === null ? -1 : log.mappingId;
    this.watchMappings();
    if (log === null) return this.queue.setDirtyLog(null);
    const dirty = new DirtyLog(native.mappingBuffer(log.mappingId), log.offset, log.size, (pages) => { c[M.dirtyLogMissed]! += pages; });
    this.queue.setDirtyLog(dirty, log.usedGpa);
  }

  /** Plugs the configured observers (capture, rate limit) into the queue's context; keeps it for bind(). */
  private observed<P>(ctx: ServiceContext<P>, cfg: QueueConfig): ServiceContext<P> {
    this.ctx = ctx;
    if (cfg.capture) {
      this.capture = new PcapWriter(cfg.capture, ctx, cfg.burst);
      ctx.plug(this.capture);
    }
    if (cfg.rateLimit) ctx.limit(new RateLimiter(cfg.rateLimit));
    return ctx;
  }

  /** Replaces the queue's rate limit between two bursts (null: none); the buckets start full. */
  setRateLimit(limit: RateLimit | null): void {
    if (limit === null) this.ctx.unlimit();
    else if (this.ctx.limiter instanceof RateLimiter) this.ctx.limiter.update(limit);
    else this.ctx.limit(new RateLimiter(limit));
  }

  /** Binds the ring and the services to new memory; a ring that no longer fits throws. */
  bind(regions: WorkerRegion[]): void {
    this.regions = regions;
    this.watchMappings();
    const mem = memoryFromMappings(regions);
    mem.setIotlb(this.iotlb);
    this.queue.attach(mem);
    this.ctx.mem = mem;
    this.views.clear(); // the loop caches nothing of memory: it asks the queue's watch() at every sleep
  }

  /** Throws GuestMemoryFaultError if one of the queue's mappings took a SIGBUS fault (one load if none did). */
  checkMemory(): void {
    const id = this.faults.check(this.mappingIds);
    if (id < 0) return;
    const r = this.regions.find((x) => x.mappingId === id);
    const what = r ? `guest memory region 0x${r.gpa.toString(16)}+0x${r.size.toString(16)}` : 'the dirty log';
    throw new GuestMemoryFaultError(id, what);
  }

  private watchMappings(): void {
    this.mappingIds = this.regions.map((r) => r.mappingId);
    if (this.logMapping >= 0) this.mappingIds.push(this.logMapping);
  }

  /**
   * Releases what the queue holds beyond its ring: frames the backend read ahead for buffers that did
   * not come (counted as rxDropStopped), and the capture's header mapping.
   */
  dispose(): void {
    try {
      this.counters[M.rxDropStopped]! += this.dropHeld();
    } catch (e) {
      // The backend's ring is already closed (the device is closing): what it held went with it.
      if (!(e instanceof native.NativeError)) throw e;
    }
    this.capture?.close();
    this.service.dispose();
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
  /** Queues let go since the last collection: their tables, chains and views are garbage. */
  private disposed = 0;

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
        if (native.poll(this.ctlOnly, SLEEP_MS) === 0) this.collect(); // idle for a while
        this.control();
        continue;
      }
      try {
        const woke = this.q!.loop.pass();
        this.q!.checkMemory();
        this.watchBackend();
        if (woke) this.control();
      } catch (e) {
        this.fail(e);
      }
    }
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
        if (this.q !== null) this.disposed++;
        this.q?.dispose();
        this.q = null;
        if (this.disposed >= COLLECT_AFTER) this.collect();
        applyFilter(this.rxFilter, m.config.filter);
        try {
          this.q = new ActiveQueue(this.boot, m.config, this.rxFilter, this.frameFilter);
          this.state = State.RUNNING;
          if (this.q.resumed !== null) this.post({ ev: 'resumed', lastAvail: this.q.queue.lastAvail, message: this.q.resumed });
          this.post({ ev: 'running' });
        } catch (e) {
          this.state = State.RUNNING; // so that fail() reports it
          this.fail(e);
        }
        return;
      case 'pause':
        if (this.state === State.RUNNING) this.quiesce();
        if (this.state === State.RUNNING) this.state = State.PAUSED;
        this.post({ ev: 'paused', lastAvail: this.q?.queue.base() ?? 0 });
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
      case 'stop': {
        if (this.state === State.RUNNING) this.quiesce();
        const lastAvail = this.q?.queue.base() ?? 0;
        this.q?.dispose(); // before the answer, so that its counts are in when the queue reads as stopped
        this.q = null;
        this.post({ ev: 'stopped', lastAvail });
        this.state = State.IDLE;
        this.disposed++;
        return;
      }
      case 'filter':
        applyFilter(this.rxFilter, m.filter);
        return;
      case 'rate':
        this.q?.setRateLimit(m.limit);
        this.post({ ev: 'rated' });
        return;
      case 'log':
        // Applied between bursts: every write after the answer is logged (or, off, none need be).
        this.q?.setLog(m.log, this.c);
        this.post({ ev: 'logging' });
        return;
      case 'memory':
        keepGuestMappings(m.ids);
        return;
      case 'call':
        // Between two passes, so no signal is in flight: the answer means the old fd is unused.
        this.q?.pending.setCallFd(m.fd);
        this.post({ ev: 'call' });
        return;
      case 'missSink':
        // Likewise: no miss is being written, so the owner may close the old sink after the answer.
        this.q?.misses.setSink(m.sink);
        this.post({ ev: 'missSink' });
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
      case 'inspect':
        this.post({ ev: 'inspect', inspection: this.inspect() });
        return;
      case 'exit':
        if (this.state === State.RUNNING) this.quiesce();
        this.q?.dispose();
        this.q = null;
        this.state = State.EXIT;
        return;
    }
  }

  /** Where the queue and its ring stand, between two passes (the 'inspect' command). */
  private inspect(): WorkerInspection {
    const q = this.q;
    const state = this.state === State.RUNNING ? 'running' : this.state === State.PAUSED ? 'paused' : this.state === State.BROKEN ? 'broken' : 'idle';
    let ring: RingInspection | null = null;
    let error: string | undefined;
    if (q !== null) {
      try {
        ring = q.queue.inspect();
      } catch (e) {
        error = (e as Error).message;
      }
    }
    const on = q?.loop.lastSleepOn ?? null;
    return {
      state,
      ring,
      ...(error !== undefined ? { error } : {}),
      lastSleep: on === null ? null : { on, ms: Math.round(q!.loop.lastSleepMs * 1000) / 1000 },
      interruptHeld: q !== null && q.pending.heldUntil > 0,
    };
  }

  /**
   * Collects what stopped queues left, if any. This small heap would not collect it on its own before
   * many restarts (each driver reset is one) had piled it up. A collection costs 10–20 ms, so never at
   * the stop itself (a migration's source stops its rings within the downtime, where it would take
   * CPU from QEMU's last copy) and rarely at a start: once the worker has been idle a while, or at a
   * start after COLLECT_AFTER queues were let go.
   */
  private collect(): void {
    if (this.disposed === 0) return;
    this.disposed = 0;
    native.collectGarbage();
  }

  /** Backend drops as of the last pass, frames as of the last drop, and whether it is failing. */
  private backendDrops = 0;
  private framesAtDrop = 0;
  private backendFailing = false;

  /**
   * Reports the backend's state on its edges, not per frame: the first drop after frames moved (a tap
   * set down, EIO; deleted, EBADFD), and the first frame after drops. Two counter reads per pass.
   */
  private watchBackend(): void {
    const c = this.c;
    const drops = c[M.txDropBackend]! + c[M.rxDropBackend]!;
    if (drops !== this.backendDrops) {
      this.backendDrops = drops;
      this.framesAtDrop = c[M.frames]!;
      if (!this.backendFailing) {
        this.backendFailing = true;
        this.post({ ev: 'backend', ok: false, errno: c[M.backendErrno]! });
      }
    } else if (this.backendFailing && c[M.frames] !== this.framesAtDrop) {
      this.backendFailing = false;
      this.post({ ev: 'backend', ok: true, errno: 0 });
    }
  }

  /**
   * Gives back the chains the service kept (so that the position the front-end reads next counts
   * them as not taken), publishes what is done and raises the pending interrupt, so nothing is left
   * half-signalled.
   */
  private quiesce(): void {
    try {
      this.q?.loop.release();
      this.q?.pending.signal();
    } catch (e) {
      this.fail(e);
    }
  }

  private fail(e: unknown): void {
    if (this.state === State.BROKEN) return;
    // Vanished memory reads as zeros, which usually breaks a ring rule first: report the cause.
    if (!(e instanceof GuestMemoryFaultError)) {
      try {
        this.q?.checkMemory();
      } catch (fault) {
        e = fault;
      }
    }
    this.state = State.BROKEN;
    this.c[M.queueBroken]! += 1;
    if (e instanceof GuestMemoryFaultError) this.c[M.memoryFaults]! += 1;
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
  // lgnet-rx0, lgnet-tx1, …: what top -H, perf and traces show for this thread.
  native.setThreadName(`lgnet-${boot.role}${boot.queueIndex}`);
  // Pinned before it reports idle, so before any jail: the thread sets its own affinity only.
  let pinError: string | null = null;
  if (boot.cpu !== undefined) {
    try {
      native.setThreadAffinity([boot.cpu]);
    } catch (e) {
      pinError = `could not run on CPU ${boot.cpu}: ${(e as Error).message}`;
    }
  }
  // Unpinned, it reports and ends (nothing keeps the thread alive). The filter hook is a module the
  // worker loads itself (functions cannot cross threads).
  if (pinError !== null) boot.control.postMessage({ ev: 'broken', code: NET_ERROR.BAD_CPUS, message: pinError } satisfies WorkerEvent);
  else void backends.loadFilter(boot.frameFilter).then(
    (filter) => new QueueWorker(boot, filter).run(),
    (e: Error) => boot.control.postMessage({ ev: 'broken', code: 'LGNET_FILTER_LOAD', message: e.message } satisfies WorkerEvent),
  );
}
