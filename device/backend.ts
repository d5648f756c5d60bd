/**
 * Backends: where frames go after the guest's TX queue and where RX frames come from.
 *
 * A Backend lives on the main thread (it opens fds, sets offloads). Each worker gets a
 * serialisable {@link PortSpec} for its queue and turns it into a {@link TxPort} or {@link RxPort}
 * with {@link openPort}. Ports move whole bursts described by a native IovecTable: one call per
 * burst, frames in guest memory, no copy.
 */
import type { IovecTable } from '../native/iovec.ts';
import type { NegotiatedFeatures } from './features.ts';
import type { FilterRef, FrameRingSpec } from './pair-backend.ts';

/** What a worker needs to reach its backend; must survive structured clone. */
export type PortSpec =
  | { kind: 'tap'; fd: number; vnetHdrLen: number }
  | { kind: 'pair'; out: FrameRingSpec; in: FrameRingSpec; dir: number; hdrLen: number; hostFd: number };

/** TX side of a backend: sends the frames of a burst. */
export interface TxPort {
  /**
   * Sends frames `first..table.frames-1`. Returns how many were sent before the backend would
   * block. A frame the backend rejects throws; the caller counts it and carries on after it.
   */
  send(table: IovecTable, first: number): number;
}

/** RX side of a backend: receives frames into guest buffers. */
export interface RxPort {
  /** Reads up to `frames` frames into the table's frames; returns how many arrived (0: nothing ready). */
  recv(table: IovecTable, frames: number): number;
  /** An fd that polls readable when frames are waiting. */
  readonly fd: number;
  /** Bytes of virtio_net_hdr the backend writes in front of each frame (0: none, the device writes it). */
  readonly vnetHdrLen: number;
}

/** A network backend for a NetDevice. */
export interface Backend {
  /** A short name for logs. */
  readonly kind: string;
  /** The number of queue pairs it can serve. */
  readonly queuePairs: number;
  /** Offload feature bits (features.ts OFFLOAD_FEATURES subset) the backend can pass through. */
  supportedOffloads(): bigint;
  /** Applies what the driver accepted: header length and receive offloads. */
  configure(f: NegotiatedFeatures): void;
  /** The spec of the port serving queue pair `pair`. */
  port(pair: number): PortSpec;
  /** A per-frame filter hook the TX workers must load when they start (pair backend). */
  frameFilter?(): FilterRef | undefined;
  /** Releases fds. */
  close(): void;
}
