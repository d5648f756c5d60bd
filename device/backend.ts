/**
 * Backends: where frames go after the guest's TX queue and where RX frames come from. This file holds
 * only the contracts; it imports no backend.
 *
 *   main thread                              worker thread (one per data queue)
 *   Backend (tap-backend.ts, pair-backend.ts)
 *     .port(pair) ──▶ PortSpec { kind, … } ──structured clone──▶ backends.ts openPorts(spec, ctx)
 *                                                                   │ the module registered for `kind`
 *                                                                   ▼
 *                                                          { tx: TxPort, rx: RxPort }
 *
 * A Backend lives on the main thread (it opens fds, sets offloads). Each worker gets a serialisable
 * PortSpec for its queue and turns it into ports through the registry (backends.ts), which hands the
 * spec to the backend module named by its `kind`. Ports move whole bursts described by a native
 * IovecTable: one call per burst, frames in guest memory.
 */
import type { PeekList, RxFilterSpec } from '../native/batch.ts';
import type { IovecTable, MappingViews } from '../native/iovec.ts';
import type { NegotiatedFeatures } from './features.ts';

/**
 * What a worker needs to reach its backend: `kind` picks the backend module (backends.ts); each
 * module extends this with its own fields (TapPortSpec, PairPortSpec). Must survive structured clone.
 */
export interface PortSpec {
  readonly kind: string;
}

/**
 * The per-frame hook of a bridging backend: `frame[off, off+len)` is the Ethernet frame (no virtio
 * header); `dir` says which way it goes; the result is a verdict of the backend (pair-backend.ts
 * VERDICT). It runs inside the TX worker thread, so it is named by module (FilterRef), not passed as a
 * function.
 */
export type FrameFilter = (frame: Uint8Array, off: number, len: number, dir: number) => number;

/** Where a filter hook lives: `{ module: 'file:///…/filter.ts', export: 'filter' }`. */
export interface FilterRef {
  module: string;
  export?: string;
}

/** TX side of a backend: sends the frames of a burst. */
export interface TxPort {
  /**
   * Sends frames `first..table.frames-1`. Returns how many were sent before the backend would
   * block. A frame the backend rejects throws; the caller counts it and carries on after it.
   */
  send(table: IovecTable, first: number): number;
  /**
   * Optional: after send(), 1 at each frame of the table that the port took but did not send, having
   * counted it under a reason of its own (the pair backend: its filter's txDropFiltered, or a failed
   * write to the host fd, txDropBackend). The caller then completes it without counting it as a frame
   * sent or in bytes. 0 (or absent) elsewhere.
   */
  readonly refused?: Uint8Array;
}

/** RX side of a backend: receives frames into guest buffers. */
export interface RxPort {
  /**
   * Reads up to `frames` frames into the table's frames; returns how many arrived (0: nothing ready).
   * A read that fails on the first frame throws (NativeError); one that fails later ends the call
   * there, and a port with `reportsWritten` says so in table.readFailures/readErrno (each lost a frame).
   */
  recv(table: IovecTable, frames: number): number;
  /**
   * Optional: reads frame after frame into the table's frames taken as guest buffers, each frame into
   * as many whole buffers as it needs, in one call (native readvMerged: MRG_RXBUF, or a filter to
   * apply). Returns the frames read; table.bytes/used/status describe them. A read that fails ends the
   * call (MERGED_STOP.ERROR, or it throws when no frame was recorded); table.readFailures counts frames
   * lost beyond that one (io_uring rounds). A port without it is read one frame at a time.
   */
  recvMerged?(table: IovecTable, first: number, buffers: number, frames: number, need: number, maxLen: number, peek: PeekList | null, filter?: RxFilterSpec | null): number;
  /**
   * True when recvMerged reads ahead (native uringReadvMerged): it takes the whole RX filter as
   * `filter` instead of a peek list, records a frame the filter rejects with used 0 and bytes =
   * −length (it takes no buffer; PEEK never comes), and may write into any buffer it is offered,
   * taken or not, so the device logs them all (migration dirty log).
   */
  readonly mergedReadsAhead?: boolean;
  /**
   * Optional, with mergedReadsAhead: drops the frames recvMerged read and holds for buffers to come, and
   * returns how many (the device counts them in rxDropStopped). Called when the queue stops.
   */
  dropHeld?(): number;
  /**
   * True when recv() fills table.written[i], for every slot i < frames, with the bytes it put into slot
   * i's buffers, which may exceed what table.bytes reports (io_uring copies a frame down into an earlier
   * slot and leaves its first copy behind). The device logs those bytes too (migration dirty log).
   * A port without it writes exactly table.bytes[i] into slots i < the count it returns, and nothing else.
   * With it, recv() also writes table.readFailures (0 when no read failed past the first frame).
   */
  readonly reportsWritten?: boolean;
  /** An fd that polls readable when frames are waiting. */
  readonly fd: number;
  /** Bytes of virtio_net_hdr the backend writes in front of each frame (0: none, the device writes it). */
  readonly vnetHdrLen: number;
}

/** The two ports of one queue pair. */
export interface Ports {
  readonly tx: TxPort;
  readonly rx: RxPort;
}

/** What the worker thread hands a backend module along with the spec. */
export interface PortContext {
  /** The queue's counters (metrics.ts M), for what the backend diverts or drops itself. */
  readonly counters: Float64Array;
  /** The filter hook the worker loaded at start (Backend.frameFilter), if any. */
  readonly frameFilter: FrameFilter | undefined;
  /**
   * This thread's views of the guest's mappings, for a backend that copies frames. The worker owns
   * them and clears them when the guest memory changes, so a port never keeps a released mapping.
   */
  readonly mappings: MappingViews;
}

/** The one signature every backend module's openPorts has; backends.ts registers them by kind. */
export type OpenPorts<S extends PortSpec = PortSpec> = (spec: S, ctx: PortContext) => Ports;

/** A network backend for a NetDevice. */
export interface Backend {
  /** The kind of its PortSpecs, a key of the registry (backends.ts); also a short name for logs. */
  readonly kind: string;
  /** The number of queue pairs it can serve. */
  readonly queuePairs: number;
  /** Offload feature bits (features.ts OFFLOAD_FEATURES subset) the backend can pass through. */
  supportedOffloads(): bigint;
  /** Applies what the driver accepted: header length and receive offloads. */
  configure(f: NegotiatedFeatures): void;
  /** The spec of the port serving queue pair `pair`. */
  port(pair: number): PortSpec;
  /**
   * Sends one frame of the device's own (not the guest's) out of queue pair 0, with a zero
   * virtio_net_hdr where the backend takes one: the RARP announce after a migration. Returns false
   * when the backend could not take it now. Absent: the backend has no such path.
   */
  inject?(frame: Uint8Array): boolean;
  /**
   * The backend's interface vanished (a tap deleted under lgnet): attach its fds again, once an
   * interface of that name exists or can be made, and re-apply what configure() set. True when it
   * did; false when it cannot yet (call again later). The fds keep their numbers, so running workers
   * go on with them. Absent: the backend cannot come back.
   */
  reattach?(): boolean;
  /**
   * The MAC the guest must have for the backend to deliver it frames (a macvtap's: its lower device
   * hands it only the frames sent to its own address). NetDevice takes it when no `mac` is given.
   */
  readonly guestAddress?: Uint8Array | undefined;
  /** A per-frame filter hook the TX workers must load when they start (pair backend). */
  frameFilter?(): FilterRef | undefined;
  /**
   * Whether the driver uses queue pair `pair` (never called for pair 0, which it always uses). A
   * backend that spreads the host's frames over its queues stops sending to a pair not in use, where
   * no one would read them. Returns how many frames it held for that pair and dropped in doing so (the
   * device counts them in rxDropDetached). Absent: the backend does not spread frames over pairs.
   */
  setPairActive?(pair: number, active: boolean): number | void;
  /** Releases fds. */
  close(): void;
}
