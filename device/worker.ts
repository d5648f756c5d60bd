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
 * The main thread drives it by posting a message on `control` and writing the control eventfd; the
 * worker reads messages synchronously (receiveMessageOnPort), since it is never in the JS event loop
 * while serving.
 *
 * A ring the guest broke (VringError) is reported once and the worker stops touching that queue; it
 * stays alive waiting for stop or reset, so a hostile guest cannot crash or spin the process.
 */
import { isMainThread, receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import * as native from '../native/index.ts';
import { GuestMemory, SplitQueue, VringError } from '../vring/index.ts';
import type { PortSpec } from './backend.ts';
import { decode } from './features.ts';
import { PendingUsed } from './interrupt.ts';
import { M } from './metrics.ts';
import { RX, RxService } from './rx.ts';
import { RxFilter } from './rx-filter.ts';
import { loadFilter, openPairPorts, type FrameFilter } from './pair-backend.ts';
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

/** Everything a worker starts with (structured-cloned; `control` is transferred). */
export interface WorkerInit {
  role: 'rx' | 'tx';
  queueIndex: number;
  ring: { size: number; desc: number; avail: number; used: number; lastAvail: number; usedIdx?: number };
  features: bigint;
  regions: WorkerRegion[];
  kickFd: number;
  callFd: number;
  ctlFd: number;
  port: PortSpec;
  counters: Float64Array;
  control: MessagePort;
  burst: number;
  busyPoll: number;
  mtu: number;
  filter?: FilterState;
}

/** Main thread → worker. */
export type WorkerCommand =
  | { cmd: 'pause' }
  | { cmd: 'resume'; regions?: WorkerRegion[] }
  | { cmd: 'stop' }
  | { cmd: 'filter'; filter: FilterState };

/** Worker → main thread. */
export type WorkerEvent =
  | { ev: 'running' }
  | { ev: 'paused'; lastAvail: number }
  | { ev: 'stopped'; lastAvail: number }
  | { ev: 'broken'; code: string; message: string };

/** How long one sleep lasts at most; the loop re-checks after it, so a lost wake-up costs this, not a hang. */
const SLEEP_MS = 1000;

const State = { RUNNING: 0, PAUSED: 1, BROKEN: 2, STOPPED: 3 } as const;

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

/** The worker's loop; exported so that it can be read and driven as a unit. */
export class QueueWorker {
  private readonly init: WorkerInit;
  private readonly c: Float64Array;
  private readonly port: MessagePort;
  private readonly filter = new RxFilter();
  private readonly waitFds: Int32Array;
  private readonly ctlOnly: Int32Array;
  private state: number = State.RUNNING;
  private mem!: GuestMemory;
  private queue!: SplitQueue;
  private pending!: PendingUsed;
  private tx: TxService | undefined;
  private rx: RxService | undefined;
  private availMapping = -1;
  private availOffset = 0;
  private readonly frameFilter: FrameFilter | undefined;

  constructor(init: WorkerInit, frameFilter?: FrameFilter) {
    this.frameFilter = frameFilter;
    this.init = init;
    this.c = init.counters;
    this.port = init.control;
    if (init.filter) applyFilter(this.filter, init.filter);
    this.ctlOnly = Int32Array.of(init.ctlFd);
    const ports = this.openPorts();
    this.waitFds = init.role === 'rx' ? Int32Array.of(init.ctlFd, ports.rx.fd) : Int32Array.of(init.ctlFd);
    const r = init.ring;
    const f = decode(init.features);
    this.queue = new SplitQueue({ size: r.size, desc: r.desc, avail: r.avail, used: r.used, eventIdx: f.eventIdx, indirect: f.indirect });
    this.bind(init.regions);
    this.queue.setBase(r.lastAvail);
    this.pending = new PendingUsed(this.queue, init.callFd, this.c);
    const opts = { burst: init.burst };
    if (init.role === 'tx') {
      this.tx = new TxService(this.queue, this.mem, f, ports.tx, this.pending, this.c, { ...opts, backendHdrLen: f.hdrLen });
    } else {
      this.rx = new RxService(this.queue, this.mem, f, ports.rx, this.pending, this.c, this.filter, { ...opts, mtu: init.mtu });
    }
  }

  private openPorts() {
    const spec = this.init.port;
    return spec.kind === 'tap' ? openTapPorts(spec) : openPairPorts(spec, this.frameFilter, this.c);
  }

  /** (Re)binds the queue to memory; a ring that no longer fits breaks the queue. */
  private bind(regions: WorkerRegion[]): void {
    this.mem = memoryFromMappings(regions);
    this.queue.attach(this.mem);
    const loc = this.queue.availIdxLocation();
    this.availMapping = loc.mappingId;
    this.availOffset = loc.mappingOffset + loc.offset;
    if (this.tx || this.rx) {
      // Services hold the memory they were built with; rebuild them over the new one.
      const f = decode(this.init.features);
      const ports = this.openPorts();
      const opts = { burst: this.init.burst };
      if (this.tx) this.tx = new TxService(this.queue, this.mem, f, ports.tx, this.pending, this.c, { ...opts, backendHdrLen: f.hdrLen });
      if (this.rx) this.rx = new RxService(this.queue, this.mem, f, ports.rx, this.pending, this.c, this.filter, { ...opts, mtu: this.init.mtu });
    }
  }

  /** Runs until stopped. */
  run(): void {
    this.post({ ev: 'running' });
    while (this.state !== State.STOPPED) {
      if (this.state !== State.RUNNING) {
        native.poll(this.ctlOnly, SLEEP_MS);
        this.control();
        continue;
      }
      try {
        this.serve();
      } catch (e) {
        this.fail(e);
      }
    }
  }

  /** One pass: a burst, and a sleep if there was nothing to do. */
  private serve(): void {
    const q = this.queue;
    if (this.tx) {
      if (this.tx.processTx() > 0) {
        if (this.pending.pending >= q.size >>> 2) this.pending.signal();
        return;
      }
      if (this.busyPoll(() => q.availPending() > 0)) return;
      this.sleepOnKick(q.lastAvail);
      return;
    }
    const r = this.rx!.processRx();
    if (r === RX.MORE) {
      if (this.pending.pending >= q.size >>> 2) this.pending.signal();
      return;
    }
    if (r === RX.BACKEND_EMPTY) {
      // lguest's rule: completions go to the guest before the backend read would block.
      this.pending.signal();
      this.sleep(this.waitFds);
      return;
    }
    // No room: wait for buffers newer than what is in the ring now.
    this.sleepOnKick(q.availIdx());
  }

  private busyPoll(ready: () => boolean): boolean {
    for (let i = 0; i < this.init.busyPoll; i++) {
      if (ready()) {
        this.c[M.busyPollHits]! += 1;
        return true;
      }
    }
    return false;
  }

  /**
   * Sleeps until the driver adds buffers past `seen`: signal pending used, re-enable notifications,
   * and let native fence, re-read avail.idx and block, so no kick can fall between check and sleep.
   */
  private sleepOnKick(seen: number): void {
    const q = this.queue;
    const signalFd = this.pending.take();
    if (q.enableNotification(seen)) {
      q.disableNotification();
      if (signalFd >= 0) native.eventfdWrite(signalFd, 1);
      return;
    }
    const t0 = performance.now();
    this.c[M.sleeps]! += 1;
    const woke = native.waitKick(this.init.kickFd, this.availMapping, this.availOffset, seen & 0xffff, SLEEP_MS, this.ctlOnly, signalFd);
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
    native.eventfdRead(this.init.ctlFd);
    for (;;) {
      const m = receiveMessageOnPort(this.port);
      if (!m) return;
      this.command(m.message as WorkerCommand);
    }
  }

  private command(m: WorkerCommand): void {
    switch (m.cmd) {
      case 'pause':
        if (this.state === State.RUNNING) this.quiesce();
        if (this.state !== State.BROKEN) this.state = State.PAUSED;
        this.post({ ev: 'paused', lastAvail: this.queue.lastAvail });
        return;
      case 'resume':
        if (this.state === State.BROKEN) return;
        try {
          if (m.regions) this.bind(m.regions);
          this.state = State.RUNNING;
        } catch (e) {
          this.fail(e);
        }
        return;
      case 'stop':
        if (this.state === State.RUNNING) this.quiesce();
        this.state = State.STOPPED;
        this.post({ ev: 'stopped', lastAvail: this.queue.lastAvail });
        return;
      case 'filter':
        applyFilter(this.filter, m.filter);
        return;
    }
  }

  /** Publishes what is done and raises the pending interrupt, so nothing is left half-signalled. */
  private quiesce(): void {
    try {
      this.pending.signal();
    } catch (e) {
      this.fail(e);
    }
  }

  private fail(e: unknown): void {
    if (this.state === State.BROKEN) return;
    this.state = State.BROKEN;
    this.c[M.queueBroken]! += 1;
    const code = e instanceof VringError ? e.code : (e as { code?: string }).code ?? 'LGNET_WORKER_ERROR';
    const message = e instanceof Error ? e.message : String(e);
    this.post({ ev: 'broken', code, message });
  }

  private post(e: WorkerEvent): void {
    this.port.postMessage(e);
  }
}

if (!isMainThread && (workerData as { lgnetQueueWorker?: boolean } | null)?.lgnetQueueWorker) {
  const init = workerData as WorkerInit;
  // The filter hook is a module the worker loads itself (functions cannot cross threads).
  const ref = init.port.kind === 'pair' && init.role === 'tx' ? init.port.filter : undefined;
  void loadFilter(ref).then(
    (filter) => new QueueWorker(init, filter).run(),
    (e: Error) => init.control.postMessage({ ev: 'broken', code: 'LGNET_FILTER_LOAD', message: e.message } satisfies WorkerEvent),
  );
}
