/**
 * NativeError: the one error class for failed system calls in lgnet's native layer.
 *
 * native/index.ts hands this class to the addon once per thread (`initialize(NativeError)`), and C++
 * constructs it as `new NativeError(errno, syscall, detail)` when a call fails, so every native
 * failure carries a positive `errno`, Node's `code` name for it ('EBADF'), the `syscall` that failed
 * ('writev', 'mmap', or a pseudo-call: 'mapping' for a dead mapping id, 'iovec' for a bad batch
 * entry), and a message saying what failed and what to do about it. Argument-type mistakes are
 * TypeError/RangeError instead, thrown before anything crosses into C++.
 */
import { getSystemErrorName } from 'node:util';

import { LgnetError } from '../errors/index.ts';

/** What to check, by errno code; appended to the message. */
const ADVICE: Readonly<Record<string, string>> = {
  EBADF: 'the fd or mapping id is closed, released or was never opened; check its lifetime',
  EFAULT: 'an address range lies outside its mapping; check the iovec table against mappingSize()',
  EINVAL: 'an argument is out of range for this call; check sizes, alignment and flags',
  EPERM: 'the process lacks the privilege (root or CAP_NET_ADMIN/CAP_SYS_ADMIN), or seccomp forbids the call',
  EACCES: 'permission denied on the path or device',
  ENOENT: 'the path or interface does not exist',
  EBUSY: 'the resource is in use (a tap name already attached, or a thread that cannot sync its seccomp filter)',
  EEXIST: 'it already exists (an fd already watched by another FdPoller on this loop, or a path already bound)',
  EMFILE: 'the process ran out of file descriptors; look for an fd leak or raise RLIMIT_NOFILE',
  ENOMEM: 'out of memory or address space',
  EPIPE: 'the peer closed the connection',
  ECONNREFUSED: 'nothing listens on that socket path',
  ECONNRESET: 'the peer reset the connection',
  ENOTSOCK: 'the fd is not a socket',
  ENXIO: 'no such device: its interface was deleted (a tap, a macvtap), or the node names another one',
  EIO: 'the device reported an I/O error (a tap that is down or detached)',
  EAGAIN: 'the call would block',
};

export class NativeError extends LgnetError {
  /** Positive errno value. */
  declare readonly errno: number;
  /** Node's name for the errno, e.g. 'EBADF'. */
  declare readonly code: string;
  /** The system call (or pseudo-call 'mapping' / 'iovec') that failed. */
  declare readonly syscall: string;
  /** Set when a TSYNC seccomp install failed: the thread that could not synchronize. */
  declare tid?: number;

  constructor(errno: number, syscall: string, detail: string) {
    const code = codeOf(errno);
    const advice = ADVICE[code];
    super(code, `${syscall} failed with ${code}: ${detail}${advice ? ` (${advice})` : ''}`, { errno, syscall });
  }
}

/** Linux errnos libuv has no name for, which lgnet meets: a tap's fd once its interface is gone
 *  (EBADFD), a macvtap's (ENOLINK). */
const LINUX_ERRNO_NAMES: Readonly<Record<number, string>> = { 67: 'ENOLINK', 77: 'EBADFD' };

function codeOf(errno: number): string {
  if (!Number.isInteger(errno) || errno <= 0) return `UNKNOWN_ERRNO_${errno}`;
  const linux = LINUX_ERRNO_NAMES[errno];
  if (linux) return linux;
  let name: string;
  try {
    name = getSystemErrorName(-errno);
  } catch {
    return `UNKNOWN_ERRNO_${errno}`;
  }
  // libuv names errnos it does not know "Unknown system error -N": keep codes identifier-like.
  return name.startsWith('Unknown') ? `UNKNOWN_ERRNO_${errno}` : name;
}
