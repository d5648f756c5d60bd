/**
 * `lgnet serve` as a child process for the sandbox suites (bin/lgnet, run inside a test namespace with
 * ip netns exec, so the pid is lgnet's own): started, its stdout/stderr kept, killed by pid only.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT } from '../../scripts/qemu.ts';
import type { Netns } from '../../harness/netns.ts';

export const LGNET = join(REPO_ROOT, 'bin/lgnet');

export interface Lgnet {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts `lgnet serve ARGS` in `ns`; resolves at its ready line (the first line on stdout). */
export function startLgnet(ns: Netns, args: string[], env: Record<string, string> = {}): Promise<Lgnet> {
  const child = spawn('ip', ['netns', 'exec', ns.name, LGNET, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const l: Lgnet = { child, stdout: () => out, stderr: () => err, exited };
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ready line: ${out}\n${err}`)), 20_000);
    const check = () => {
      if (out.includes('\n')) {
        clearTimeout(t);
        resolve(l);
      }
    };
    child.stdout!.on('data', check);
    void exited.then((e) => {
      clearTimeout(t);
      reject(new Error(`lgnet exited early (${e.code}/${e.signal}): ${err}`));
    });
  });
}

export interface LogLine { level: number; msg: string; [k: string]: unknown }

/** lgnet's JSON log lines so far. */
export function logLines(l: Lgnet): LogLine[] {
  return l.stderr().split('\n').filter(Boolean).map((x) => JSON.parse(x) as LogLine);
}

/** Sends `sig` (default SIGKILL) by pid if the process still runs. */
export function kill(l: Lgnet | undefined, sig: NodeJS.Signals = 'SIGKILL'): void {
  if (l?.child.pid !== undefined && l.child.exitCode === null && l.child.signalCode === null) {
    try {
      process.kill(l.child.pid, sig);
    } catch {
      /* gone */
    }
  }
}

/** Whether the process is still running. */
export function alive(l: Lgnet): boolean {
  return l.child.exitCode === null && l.child.signalCode === null;
}
