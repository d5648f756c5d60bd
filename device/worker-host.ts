/**
 * The worker host: NetDevice's side of one data queue's worker thread. It starts the thread (once;
 * the thread outlives queue stops and sits idle), sends it commands, waits for its answers and ends it.
 * Off the frame path: the worker (worker.ts) moves frames on its own; the host only steers it with the
 * messages of worker-protocol.ts.
 *
 *   NetDevice ── command(cmd, answers) ──▶ WorkerHost ── port.postMessage + ctlFlag + ctl eventfd ──▶ worker
 *             ◀──── Promise<WorkerEvent> ──          ◀───────────── port 'message' ─────────────────
 *
 * Workers are started before a jail forbids loading code (NetDevice.startWorkers). A worker that does
 * not answer within WORKER_TIMEOUT_MS is reported, and the device replaces it (kill) next time.
 */
import { MessageChannel, type MessagePort, type Worker } from 'node:worker_threads';
import * as native from '../native/index.ts';
import { NET_ERROR, WorkerError } from './errors.ts';
import type { FilterRef } from './backend.ts';
import { siblingModule, startWorker } from './thread.ts';
import type { WorkerBoot, WorkerCommand, WorkerEvent } from './worker-protocol.ts';

const WORKER_URL = siblingModule('worker', import.meta.url);
/** How long the device waits for a worker to answer a command. */
export const WORKER_TIMEOUT_MS = 5000;

type EventName = WorkerEvent['ev'];

/** Who a host works for. */
export interface WorkerHostOptions {
  /** The queue's index (even: RX, odd: TX). */
  index: number;
  /** The queue's counters, shared with the worker. */
  counters: Float64Array;
  /** The CPU the thread runs on, or undefined for anywhere. */
  cpu?: number;
  /** Every event the worker posts, before the commands waiting for it are answered. */
  onEvent(e: WorkerEvent): void;
  /** The thread is gone (exited, crashed or killed): no queue runs on it any more. */
  onGone(): void;
}

/** One queue's worker thread, seen from the main thread. */
export class WorkerHost {
  /** Set with each command, so that a worker that never sleeps still sees it. Lives as long as the host. */
  readonly ctlFlag = new Int32Array(new SharedArrayBuffer(4));
  private readonly opts: WorkerHostOptions;
  private worker: Worker | undefined;
  private spawning: Promise<void> | undefined;
  private control: MessagePort | undefined;
  private ctlFd = -1;
  private waiters: Array<{ evs: ReadonlyArray<EventName>; resolve: (e: WorkerEvent) => void }> = [];

  constructor(opts: WorkerHostOptions) {
    this.opts = opts;
  }

  /** The thread runs (idle or serving). */
  get started(): boolean {
    return this.worker !== undefined;
  }

  /**
   * Starts the thread if it is not running; resolves once it reports idle. `frameFilter` is the pair
   * backend's filter hook, which a TX worker loads as it starts.
   */
  start(frameFilter?: FilterRef): Promise<void> {
    if (this.worker) return Promise.resolve();
    if (this.spawning) return this.spawning;
    const { index } = this.opts;
    const { port1, port2 } = new MessageChannel();
    this.ctlFd = native.eventfdCreate({ nonblocking: true });
    this.control = port1;
    const tx = (index & 1) === 1;
    const boot: WorkerBoot = {
      lgnetQueueWorker: true,
      role: tx ? 'tx' : 'rx',
      queueIndex: index,
      ctlFd: this.ctlFd,
      ctlFlag: this.ctlFlag,
      counters: this.opts.counters,
      control: port2,
      ...(frameFilter && tx ? { frameFilter } : {}),
      ...(this.opts.cpu !== undefined ? { cpu: this.opts.cpu } : {}),
    };
    const idle = this.waitFor(['idle', 'broken']);
    const w = startWorker(WORKER_URL, { workerData: boot, transferList: [port2], name: `lgnet-q${index}` });
    this.worker = w;
    port1.on('message', (e: WorkerEvent) => this.onEvent(e));
    port1.unref();
    w.on('error', (e) => this.onEvent({ ev: 'broken', code: NET_ERROR.WORKER_CRASH, message: e.message }));
    w.on('exit', () => {
      if (this.worker === w) this.forget();
    });
    w.unref();
    this.spawning = idle.then(
      (e) => {
        this.spawning = undefined;
        if (e.ev === 'broken') throw new WorkerError(NET_ERROR.WORKER_START, `queue ${index}'s worker could not start: ${e.message}`);
      },
      async (e) => {
        this.spawning = undefined;
        await this.kill();
        throw e;
      },
    );
    return this.spawning;
  }

  /** Wakes the worker without a command (its control eventfd): a queue waiting for an IOTLB mapping looks again. */
  wake(): void {
    if (this.ctlFd >= 0) native.eventfdWrite(this.ctlFd, 1);
  }

  /** Posts a command without waiting for an answer. */
  send(m: WorkerCommand): void {
    this.control!.postMessage(m);
    Atomics.store(this.ctlFlag, 0, 1); // seen by a busy worker
    native.eventfdWrite(this.ctlFd, 1); // wakes a sleeping one
  }

  /** Posts a command and resolves with the first of the events `evs` that the worker posts after it
   *  (rejects with WORKER_TIMEOUT after `timeoutMs`). */
  command(m: WorkerCommand, evs: ReadonlyArray<EventName>, timeoutMs: number = WORKER_TIMEOUT_MS): Promise<WorkerEvent> {
    const p = this.waitFor(evs, timeoutMs);
    this.send(m);
    return p;
  }

  /** Asks the thread to exit, and terminates it if it does not within WORKER_TIMEOUT_MS. */
  async kill(): Promise<void> {
    const w = this.worker;
    if (!w) return;
    const exited = new Promise((r) => w.once('exit', r));
    try {
      this.send({ cmd: 'exit' });
    } catch { /* the port or fd is already gone */ }
    await Promise.race([exited, new Promise((r) => setTimeout(r, WORKER_TIMEOUT_MS))]);
    if (this.worker === w) {
      await w.terminate();
      this.forget();
    }
  }

  private waitFor(evs: ReadonlyArray<EventName>, timeoutMs: number = WORKER_TIMEOUT_MS): Promise<WorkerEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new WorkerError(NET_ERROR.WORKER_TIMEOUT, `queue ${this.opts.index}'s worker did not report "${evs.join('" or "')}" within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = { evs, resolve: (e: WorkerEvent) => { clearTimeout(timer); resolve(e); } };
      this.waiters.push(waiter);
    });
  }

  private onEvent(e: WorkerEvent): void {
    this.opts.onEvent(e);
    const ready = this.waiters.filter((w) => w.evs.includes(e.ev));
    this.waiters = this.waiters.filter((w) => !w.evs.includes(e.ev));
    for (const w of ready) w.resolve(e);
  }

  private forget(): void {
    this.worker = undefined;
    this.control?.close();
    this.control = undefined;
    if (this.ctlFd >= 0) native.close(this.ctlFd);
    this.ctlFd = -1;
    this.opts.onGone();
  }
}
