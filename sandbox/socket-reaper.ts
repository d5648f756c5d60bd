/**
 * Removes the vhost-user socket file when lgnet exits, however it exits. A jailed lgnet may not unlink
 * anything (seccomp), and a SIGKILLed one cannot; so before the jail, lgnet starts this tiny helper
 * process that waits for lgnet's end of a pipe to close and then removes the socket — only if it is
 * still the same file (same inode), so that a new lgnet already listening on the path is left alone.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { statSync } from 'node:fs';

const REAPER = `
const fs = require('node:fs');
const [path, dev, ino] = process.argv.slice(1);
process.stdin.resume();
process.stdin.on('error', () => {});
process.stdin.on('close', () => {
  try {
    const st = fs.lstatSync(path);
    if (String(st.dev) === dev && String(st.ino) === ino) fs.unlinkSync(path);
  } catch {}
  process.exit(0);
});
`;

/** Starts the reaper for the socket at `path` (which must exist). */
export function startSocketReaper(path: string): ChildProcess {
  const st = statSync(path);
  const child = spawn(process.execPath, ['-e', REAPER, path, String(st.dev), String(st.ino)], {
    stdio: ['pipe', 'ignore', 'ignore'],
    detached: true, // not in lgnet's process group: a Ctrl-C to lgnet leaves the reaper to finish
  });
  child.unref();
  (child.stdin as unknown as { unref?: () => void }).unref?.();
  return child;
}
