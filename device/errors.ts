/**
 * Typed errors of the device layer. Each has a stable `code` and a message that says what happened and
 * what to do. Guest-caused per-frame problems are not thrown: they are counted drops (see metrics.ts).
 */

/** Base of all lgnet domain errors. */
export class LgnetError extends Error {
  /** A stable, machine-readable code. */
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** The driver or the VMM asked for something the device does not offer or cannot do. */
export class NetConfigError extends LgnetError {}

/** The device was used in the wrong state (e.g. starting a queue with no memory). */
export class NetStateError extends LgnetError {}

/** A worker thread failed or did not answer in time. */
export class WorkerError extends LgnetError {}
