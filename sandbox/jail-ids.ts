/**
 * The jail's step (a): --user/--group names resolved to ids, from /etc/passwd and /etc/group. It runs
 * before the chroot (jail.ts), while /etc is still visible; numeric ids are taken as they are.
 * Spec: no vhost-user.rst section (the sandbox is lgnet's own); passwd(5), group(5).
 * Design: DESIGN.md "Features to reach", Sandbox (optional uid/gid drop and chroot).
 */
import { readFileSync } from 'node:fs';
import { fail, JAIL_ERROR, type JailErrorCode } from './jail-errors.ts';

interface PasswdEntry { name: string; uid: number; gid: number }

function parseDb(path: string): string[][] {
  try {
    return readFileSync(path, 'utf8').split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(':'));
  } catch {
    return [];
  }
}

function isNumeric(v: string | number): boolean {
  return typeof v === 'number' || /^\d+$/.test(v);
}

function checkId(v: number, what: string, code: JailErrorCode): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff_fffe) fail(code, 'resolve', `${what} ${v} is not a valid id`, 'Give a name or a number in 0..4294967294.');
  return v;
}

/** Resolves --user/--group to ids, reading /etc/passwd and /etc/group (so: before the chroot). */
export function resolveIds(user?: string | number, group?: string | number): { uid?: number; gid?: number } {
  let uid: number | undefined;
  let gid: number | undefined;
  let primary: number | undefined;
  if (user !== undefined) {
    if (isNumeric(user)) {
      uid = checkId(Number(user), 'uid', JAIL_ERROR.USER);
      const e = parseDb('/etc/passwd').find((f) => Number(f[2]) === uid);
      if (e) primary = Number(e[3]);
    } else {
      const e = parseDb('/etc/passwd').find((f) => f[0] === user);
      if (!e) fail(JAIL_ERROR.USER, 'resolve', `no user '${user}' in /etc/passwd`, 'Give an existing user (e.g. nobody) or a numeric uid.');
      const p: PasswdEntry = { name: e[0]!, uid: Number(e[2]), gid: Number(e[3]) };
      uid = checkId(p.uid, 'uid', JAIL_ERROR.USER);
      primary = p.gid;
    }
  }
  if (group !== undefined) {
    if (isNumeric(group)) gid = checkId(Number(group), 'gid', JAIL_ERROR.GROUP);
    else {
      const e = parseDb('/etc/group').find((f) => f[0] === group);
      if (!e) fail(JAIL_ERROR.GROUP, 'resolve', `no group '${group}' in /etc/group`, 'Give an existing group (e.g. nogroup) or a numeric gid.');
      gid = checkId(Number(e[2]), 'gid', JAIL_ERROR.GROUP);
    }
  } else if (uid !== undefined) {
    if (primary === undefined) fail(JAIL_ERROR.GROUP, 'resolve', `uid ${uid} has no /etc/passwd entry to take a primary group from`, 'Give --group as well.');
    gid = checkId(primary, 'gid', JAIL_ERROR.GROUP);
  }
  return { ...(uid !== undefined ? { uid } : {}), ...(gid !== undefined ? { gid } : {}) };
}
