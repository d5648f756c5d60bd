/**
 * Fd ownership in the vhost-user back-end: every fd a front-end sends (SCM_RIGHTS) is owned by
 * exactly one holder (a message, the memory table, a ring, the inflight buffer) and closed by it once,
 * on every path, so repeated messages leak nothing.
 * Spec: QEMU docs/interop/vhost-user.rst, "Communication" (ancillary data); DESIGN.md, "Untrusted
 * input" (CVE-2019-14818, CVE-2020-10726: repeated requests exhausting fds).
 */
import * as native from '../../native/index.ts';

/** Closes `fd`, ignoring an fd that is already gone: teardown paths close what they hold, whatever happened before. */
export function closeQuietly(fd: number): void {
  try {
    native.close(fd);
  } catch {
    /* already closed */
  }
}
