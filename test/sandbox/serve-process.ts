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

/**
 * Starts `lgnet serve ARGS` in `ns`; resolves at its ready line (the first line on stdout). `fds` are
 * inherited as fds 3, 4, …; `wrap` runs before lgnet in the same process (e.g. setpriv).
 */
export function startLgnet(ns: Netns, args: string[], env: Record<string, string> = {}, opts: { fds?: number[]; wrap?: readonly string[] } = {}): Promise<Lgnet> {
  const child = spawn('ip', ['netns', 'exec', ns.name, ...(opts.wrap ?? []), LGNET, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe', ...(opts.fds ?? [])], env: { ...process.env, ...env } });
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

/** The keys of a JSON object's top level, in order and with repeats (JSON.parse keeps only the last). */
export function topLevelKeys(line: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === '"') {
      let j = i + 1;
      while (line[j] !== '"') j += line[j] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) keys.push(JSON.parse(line.slice(i, j + 1)) as string);
      expectKey = false;
      i = j;
    } else if (c === '{' || c === '[') {
      depth++;
      expectKey = depth === 1;
    } else if (c === '}' || c === ']') depth--;
    else if (c === ',' && depth === 1) expectKey = true;
  }
  return keys;
}

/** lgnet's JSON log lines so far; throws on a line that names a key twice (a reader would keep the last). */
export function logLines(l: Lgnet): LogLine[] {
  return l.stderr().split('\n').filter(Boolean).map((x) => {
    const keys = topLevelKeys(x);
    const twice = keys.filter((k, i) => keys.indexOf(k) !== i);
    if (twice.length) throw new Error(`log line names ${twice.join(', ')} twice: ${x}`);
    return JSON.parse(x) as LogLine;
  });
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
