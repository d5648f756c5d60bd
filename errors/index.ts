/**
 * errors/: the one root of every error lgnet throws on purpose, at the bottom of the stack so that
 * every layer can extend it (vring/ included, which imports nothing else).
 *
 *   LgnetError                          code, message (what happened + what to do), errno/syscall
 *   ├── NativeError      native/        a system call failed: code is Node's errno name ('EBADF')
 *   ├── VringError       vring/         the guest broke a ring rule: VRING_* (vring/errors.ts)
 *   ├── NetError         device/        configuration and state: NET_* (device/errors.ts)
 *   ├── VhostUserError   sandbox/       the front-end broke the protocol: VHOST_USER_*
 *   ├── JailError        sandbox/       a jail step failed: LGNET_JAIL_*
 *   ├── BpfAssemblyError sandbox/       the seccomp policy does not compile: LGNET_BPF_*
 *   └── FrontendError    harness/       the back-end under test misbehaved: FRONTEND_*
 *
 * Each layer keeps its codes in one `as const` table next to its classes. Codes are stable: tests,
 * metrics and logs key on them. `instanceof LgnetError` holds across two copies of lgnet in one
 * process (a VMM and a test suite that each depend on it): the class is recognised by a
 * Symbol.for brand, as undici does, not by identity.
 */

const BRAND: unique symbol = Symbol.for('lgnet.error') as never;

/** Where a failing system call is part of the story. */
export interface ErrorOptions {
  cause?: unknown;
  /** Positive errno of the system call that failed. */
  errno?: number;
  /** The system call that failed. */
  syscall?: string;
}

/** Root of every error lgnet throws on purpose. `code` is stable; `message` is for humans. */
export class LgnetError extends Error {
  /** A stable, machine-readable code, from the table of the layer that threw it. */
  readonly code: string;
  /** Positive errno, when a system call failed. */
  readonly errno: number | undefined;
  /** The system call that failed, when one did. */
  readonly syscall: string | undefined;
  declare readonly [BRAND]: true;

  constructor(code: string, message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.errno = options.errno;
    this.syscall = options.syscall;
    Object.defineProperty(this, BRAND, { value: true });
  }

  /** Any lgnet error, from this copy of lgnet or another; subclasses test their prototype chain. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    if (this !== LgnetError) return Function.prototype[Symbol.hasInstance].call(this, value);
    return typeof value === 'object' && value !== null && (value as { [BRAND]?: unknown })[BRAND] === true;
  }
}

/** Whether `e` is an lgnet error with this code. */
export function isLgnetError(e: unknown, code?: string): e is LgnetError {
  return e instanceof LgnetError && (code === undefined || e.code === code);
}
