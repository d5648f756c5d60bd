/**
 * The jail's step (0): no child process of ours may keep running outside the jail. A child runs with
 * our uid and no seccomp filter and shares our fds, so enterJail (jail.ts) refuses while one lives
 * that the caller did not vouch for (lgnet serve's socket reapers). Read from /proc, so before the
 * chroot.
 * Spec: no vhost-user.rst section (the sandbox is lgnet's own); proc(5): /proc/<pid>/task/<tid>/children,
 * /proc/<pid>/stat. Design: docs/SECURITY.md, the child rule.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { fail, JAIL_ERROR } from './jail-errors.ts';

/** A child process of this process, as /proc shows it. */
export interface ChildProcessInfo {
  pid: number;
  /** The state letter of /proc/<pid>/stat (R, S, D, Z, ...). */
  state: string;
  argv: string[];
}

/**
 * The child processes of this process that still run (zombies run nothing and are left out), from
 * every thread's /proc/self/task/<tid>/children. Empty when /proc is not mounted.
 */
export function liveChildren(): ChildProcessInfo[] {
  const out: ChildProcessInfo[] = [];
  let tasks: string[];
  try {
    tasks = readdirSync('/proc/self/task');
  } catch {
    return out;
  }
  for (const tid of tasks) {
    let pids: number[];
    try {
      pids = readFileSync(`/proc/self/task/${tid}/children`, 'utf8').split(' ').filter(Boolean).map(Number);
    } catch {
      continue; // the thread ended
    }
    for (const pid of pids) {
      const c = childInfo(pid);
      if (c && c.state !== 'Z' && c.state !== 'X') out.push(c);
    }
  }
  return out;
}

function childInfo(pid: number): ChildProcessInfo | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    return { pid, state, argv };
  } catch {
    return null; // it ended and was reaped
  }
}

/** Refuses to go on while a child process that nobody vouched for runs. */
export function refuseChildren(keep: readonly number[]): void {
  const left = liveChildren().filter((c) => !keep.includes(c.pid));
  if (left.length > 0) {
    const list = left.map((c) => `${c.pid} (${c.argv.join(' ').slice(0, 80)})`).join(', ');
    fail(JAIL_ERROR.CHILDREN, 'children', `child process ${list} still runs`,
      'A child runs outside the jail, with this process\'s uid and no seccomp filter, and shares fds with it: end it (or wait for it) before enterJail, or vouch for it with keepChildren.');
  }
}
