/**
 * The jail's error: one JailError per step that can fail, with a stable `code`, the `errno`/`syscall`
 * of a failed system call, and a message that says what to do. Shared by the jail's parts (jail.ts,
 * jail-policy.ts, jail-ids.ts, jail-children.ts); sandbox/jail.ts re-exports it.
 * Spec: no vhost-user.rst section (the sandbox is lgnet's own). Design: DESIGN.md "Layers" (one error
 * root, codes in tables), STYLE.md "What lgnet should absorb" §8 (errors carry errno).
 */
import { LgnetError } from '../errors/index.ts';
import { NativeError } from '../native/index.ts';

/** Stable codes of JailError, one per step that can fail. */
export const JAIL_ERROR = {
  THREAD: 'LGNET_JAIL_THREAD',
  ARCH: 'LGNET_JAIL_ARCH',
  USER: 'LGNET_JAIL_USER',
  GROUP: 'LGNET_JAIL_GROUP',
  MAXFDS: 'LGNET_JAIL_MAXFDS',
  CHROOT: 'LGNET_JAIL_CHROOT',
  SETGROUPS: 'LGNET_JAIL_SETGROUPS',
  SETGID: 'LGNET_JAIL_SETGID',
  SETUID: 'LGNET_JAIL_SETUID',
  RLIMIT: 'LGNET_JAIL_RLIMIT',
  NO_NEW_PRIVS: 'LGNET_JAIL_NO_NEW_PRIVS',
  SECCOMP: 'LGNET_JAIL_SECCOMP',
  ALREADY: 'LGNET_JAIL_ALREADY',
  CHILDREN: 'LGNET_JAIL_CHILDREN',
} as const;
export type JailErrorCode = (typeof JAIL_ERROR)[keyof typeof JAIL_ERROR];

/** A jail step failed. Nothing after it was applied; what came before stays applied. */
export class JailError extends LgnetError {
  declare readonly code: JailErrorCode;
  /** The step: 'chroot', 'setresuid', 'seccomp', ... */
  readonly step: string;

  constructor(code: JailErrorCode, step: string, message: string, cause?: unknown) {
    const ne = cause instanceof NativeError ? cause : undefined;
    super(code, message, { cause, errno: ne?.errno, syscall: ne?.syscall });
    this.step = step;
  }
}

/** Throws the JailError of `step`: "jail: <what>[: <cause>]. <todo>". */
export function fail(code: JailErrorCode, step: string, what: string, todo: string, cause?: unknown): never {
  const detail = cause instanceof Error ? `: ${cause.message}` : '';
  throw new JailError(code, step, `jail: ${what}${detail}. ${todo}`, cause);
}
