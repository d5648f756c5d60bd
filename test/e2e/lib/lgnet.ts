/**
 * `lgnet serve` as a child process for the end-to-end tests: started inside the test namespace
 * (ip netns exec, which execs in place, and bin/lgnet execs node: the pid is lgnet's own), stopped by
 * pid only.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT } from '../../../scripts/qemu.ts';

export interface Lgnet {
  child: ChildProcess;
  pid: number;
  /** performance.now() when the ready line was seen. */
  readyAt: number;
}

const live = new Set<ChildProcess>();
let hooked = false;
/** Last resort: a test process that dies must not leave lgnet running (by pid, like everything here). */
function track(child: ChildProcess): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const c of live) {
      try {
        if (c.pid !== undefined) process.kill(c.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  });
}

/**
 * Starts `lgnet serve` in the namespace; resolves once it printed its ready line. stderr (JSON logs)
 * goes to log. `fds` are inherited as fds 3, 4, … (for --tap-fd); `wrap` runs before lgnet in the same
 * process (e.g. setpriv).
 */
export function startLgnet(ns: string, socket: string, tap: string, log: string[], extra: string[] = [], opts: { fds?: number[]; wrap?: readonly string[] } = {}): Promise<Lgnet> {
  const child = spawn('ip', ['netns', 'exec', ns, ...(opts.wrap ?? []), join(REPO_ROOT, 'bin/lgnet'), 'serve', '--socket', socket, '--tap', tap, '--log-level', 'debug', ...extra], {
    stdio: ['ignore', 'pipe', 'pipe', ...(opts.fds ?? [])],
  });
  track(child);
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => log.push(d));
  return new Promise((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => {
      if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
      reject(new Error(`lgnet did not get ready: ${out}\n${log.join('')}`));
    }, 20_000);
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      out += d;
      if (out.includes('lgnet ready')) {
        clearTimeout(t);
        resolve({ child, pid: child.pid!, readyAt: performance.now() });
      }
    });
    child.on('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`lgnet exited (${code}) before ready: ${log.join('')}`));
    });
  });
}

function running(child: ChildProcess | undefined): child is ChildProcess & { pid: number } {
  return !!child && child.exitCode === null && child.signalCode === null && child.pid !== undefined;
}

/** SIGTERM by pid (SIGKILL after 10 s); resolves with the exit code. Idempotent. */
export function stopLgnet(child: ChildProcess | undefined): Promise<number | null> {
  if (!running(child)) return Promise.resolve(child?.exitCode ?? null);
  return new Promise((resolve) => {
    const k = setTimeout(() => running(child) && process.kill(child.pid, 'SIGKILL'), 10_000);
    child.once('exit', (code) => {
      clearTimeout(k);
      resolve(code);
    });
    process.kill(child.pid, 'SIGTERM');
  });
}

/** SIGKILL by pid; resolves with the signal once the process is gone. */
export function killLgnet(child: ChildProcess): Promise<NodeJS.Signals | null> {
  if (!running(child)) return Promise.resolve(child.signalCode);
  return new Promise((resolve) => {
    child.once('exit', (_code, signal) => resolve(signal));
    process.kill(child.pid, 'SIGKILL');
  });
}
