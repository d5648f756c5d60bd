/**
 * Test-side driver of a jailed child process (test/sandbox/fixtures/*.ts): spawns
 * `node --import tsx <fixture> ...args`, sends one command line at a time on stdin, and resolves with
 * the next JSON line the child prints. The jail is never applied to the test runner itself.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export type Msg = Record<string, any>;

export function fixture(name: string): string {
  return fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
}

export class JailChild {
  readonly proc: ChildProcessWithoutNullStreams;
  readonly stderr: string[] = [];
  private readonly queue: Msg[] = [];
  private readonly waiters: Array<(m: Msg) => void> = [];
  private exited: { code: number | null; signal: string | null } | null = null;
  readonly exit: Promise<{ code: number | null; signal: string | null }>;

  /** env: extra variables for the child, on top of this process's environment. */
  constructor(script: string, args: string[], env: Record<string, string> = {}) {
    this.proc = spawn(process.execPath, ['--import', 'tsx', script, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    createInterface({ input: this.proc.stdout }).on('line', (line) => {
      let m: Msg;
      try {
        m = JSON.parse(line) as Msg;
      } catch {
        m = { ev: 'text', line };
      }
      const w = this.waiters.shift();
      if (w) w(m);
      else this.queue.push(m);
    });
    this.proc.stderr.on('data', (d: Buffer) => this.stderr.push(d.toString()));
    // 'close', not 'exit': it comes after stdout and stderr are drained, so a crash's last words (a
    // CHECK message, an abort backtrace) are in this.stderr when the exit is reported.
    this.exit = new Promise((resolve) => {
      this.proc.on('close', (code, signal) => {
        this.exited = { code, signal };
        for (const w of this.waiters.splice(0)) w({ ev: 'exited', code, signal });
        resolve(this.exited);
      });
    });
  }

  get pid(): number {
    return this.proc.pid!;
  }

  /** The next message, or a timeout error that carries the child's stderr. */
  next(timeoutMs = 20_000): Promise<Msg> {
    const m = this.queue.shift();
    if (m) return Promise.resolve(m);
    if (this.exited) return Promise.resolve({ ev: 'exited', ...this.exited });
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms; stderr:\n${this.stderr.join('')}`)), timeoutMs);
      this.waiters.push((msg) => {
        clearTimeout(t);
        resolve(msg);
      });
    });
  }

  /** Sends a command and waits for its answer. */
  async cmd(line: string, timeoutMs = 20_000): Promise<Msg> {
    this.proc.stdin.write(`${line}\n`);
    return this.next(timeoutMs);
  }

  /** Fields of /proc/<pid>/status (or of one task). */
  status(tid?: number): Record<string, string> {
    const path = tid === undefined ? `/proc/${this.pid}/status` : `/proc/${this.pid}/task/${tid}/status`;
    return parseStatus(readFileSync(path, 'utf8'));
  }

  /** Every task's status. */
  tasks(): Array<Record<string, string>> {
    const dir = `/proc/${this.pid}/task`;
    const out: Array<Record<string, string>> = [];
    for (const t of spawnSync('ls', [dir], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean)) {
      try {
        out.push({ tid: t, ...parseStatus(readFileSync(`${dir}/${t}/status`, 'utf8')) });
      } catch { /* the task ended */ }
    }
    return out;
  }

  /** /proc/<pid>/limits as { 'Max core file size': [soft, hard], ... }. */
  limits(): Record<string, [string, string]> {
    const out: Record<string, [string, string]> = {};
    for (const line of readFileSync(`/proc/${this.pid}/limits`, 'utf8').split('\n').slice(1)) {
      const m = /^(.+?)\s{2,}(\S+)\s+(\S+)/.exec(line);
      if (m) out[m[1]!] = [m[2]!, m[3]!];
    }
    return out;
  }

  kill(): void {
    if (!this.exited && this.proc.pid !== undefined) {
      try {
        process.kill(this.proc.pid, 'SIGKILL');
      } catch { /* gone */ }
    }
  }
}

export function parseStatus(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

/**
 * Builds test/sandbox/fixtures/rawsys.c (a raw syscall(2) helper addon) into a temp dir. Returns its
 * path, or null with the reason when gcc or Node's headers are missing.
 */
export function buildRawsys(): { path: string | null; why: string } {
  const include = ['/usr/include/node', join(process.execPath, '../../include/node')].find((d) => existsSync(join(d, 'node_api.h')));
  if (!include) return { path: null, why: 'node_api.h not found (install nodejs headers)' };
  const out = join(mkdtempSync(join(tmpdir(), 'lgnet-rawsys-')), 'rawsys.node');
  const r = spawnSync('gcc', ['-shared', '-fPIC', '-O1', `-I${include}`, '-o', out, fixture('rawsys.c')], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return { path: null, why: `gcc failed: ${r.error?.message ?? r.stderr}` };
  return { path: out, why: '' };
}
