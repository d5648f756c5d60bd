/**
 * Regenerates the observed syscall set behind sandbox/seccomp-policy.ts: runs a NetDevice serving a
 * tap under load (test/sandbox/fixtures/jailed-device.ts: harness driver → TX worker → tap → packet
 * socket, and back through the RX worker) under `strace -f`, keeps only the threads of the lgnet
 * process (tsx's esbuild helper and `ip` are other processes), and only what happens after the
 * device is up (the "ready" line: the point where `lgnet serve` enters its jail). Then it prints, per
 * role, each syscall with its count, and checks every observed call against the compiled policy:
 *
 *   npx tsx scripts/seccomp-trace.ts [--seconds 10] [--jail] [--keep LOG]
 *
 *   --jail     trace with the jail on as well: any "= -1 EPERM" the jail caused while serving is listed
 *   --keep     keep the raw strace log at LOG
 *
 * Roles in the output: main (the main thread), worker (threads that did readv/writev: the queue
 * workers), helper (every other thread: V8 platform, libuv threadpool, loader). The main filter must
 * cover all three (it is installed with TSYNC); the worker filter must cover `worker`.
 * Exit status 1 when something observed would be refused. Needs root (netns, tap) and strace.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { compilePolicy, currentArch, syscallTable } from '../sandbox/jail.ts';
import { AUDIT_ARCH, evaluate, SECCOMP_RET } from '../sandbox/seccomp-bpf.ts';
import type { Role } from '../sandbox/seccomp-policy.ts';
import { createNetns, destroyAllNetns } from '../harness/netns.ts';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}
const seconds = Number(arg('seconds') ?? 10);
const withJail = process.argv.includes('--jail');
const keep = arg('keep');

const arch = currentArch();
if (!arch) throw new Error(`no syscall table for ${process.arch}`);
const table = syscallTable(arch);
const fixture = fileURLToPath(new URL('../test/sandbox/fixtures/jailed-device.ts', import.meta.url));

// ---- run ---------------------------------------------------------------------------------------------
const ns = createNetns('lgtrace');
const dir = mkdtempSync(join(tmpdir(), 'lgnet-trace-'));
const log = join(dir, 'strace.log');
let out: string;
try {
  const args = ['-f', '-qq', '-X', 'raw', '-s', '64', '-o', log, process.execPath, '--import', 'tsx', fixture, '--netns', ns.path, '--nsname', ns.name, '--load-seconds', String(seconds)];
  if (withJail) args.push('--jail', JSON.stringify({ user: 'nobody', group: 'nogroup' }));
  const r = spawnSync('strace', args, { encoding: 'utf8', timeout: (seconds + 120) * 1000 });
  if (r.error) throw r.error;
  out = r.stdout;
  if (r.status !== 0) throw new Error(`traced run failed (exit ${r.status}):\n${r.stderr}`);
  if (keep) copyFileSync(log, keep);
} finally {
  destroyAllNetns();
}
const lines = readFileSync(log, 'utf8').split('\n');
rmSync(dir, { recursive: true, force: true });

// ---- parse -------------------------------------------------------------------------------------------
interface Call { tid: number; name: string; args: Array<number | null>; result: string }
const CLONE_THREAD = 0x10000;
const root = Number(lines[0]!.split(/\s+/)[0]);
const threads = new Set<number>([root]);
const pendingClone = new Map<number, boolean>(); // tid → the clone it started creates a thread
const calls: Call[] = [];
let ready = false;
const rings: number[] = [];

function parseArgs(text: string): Array<number | null> {
  // Leading arguments only, as strace -X raw prints them: numbers (hex or decimal), else null.
  return text.split(/,\s*/).slice(0, 6).map((a) => (/^-?(0x[0-9a-f]+|\d+)$/.test(a.trim()) ? Number(a.trim()) : null));
}

for (const line of lines) {
  const m = /^(\d+)\s+(.*)$/.exec(line);
  if (!m) continue;
  const tid = Number(m[1]);
  let rest = m[2]!;
  const resumed = /^<\.\.\. (\w+) resumed>.*= (-?\w+)/.exec(rest);
  if (resumed) {
    if ((resumed[1] === 'clone' || resumed[1] === 'clone3') && pendingClone.get(tid) && /^\d+$/.test(resumed[2]!)) threads.add(Number(resumed[2]));
    continue;
  }
  const call = /^(\w+)\((.*)$/.exec(rest);
  if (!call) continue;
  const name = call[1]!;
  rest = call[2]!;
  if (!threads.has(tid)) continue;
  const result = /\)\s+= (.*)$/.exec(rest)?.[1] ?? '(unfinished)';
  if (name === 'clone' || name === 'clone3') {
    const flags = name === 'clone' ? Number(/flags=(0x[0-9a-f]+|\d+)/.exec(rest)?.[1] ?? 0) : Number(/flags=(0x[0-9a-f]+|\d+)/.exec(rest)?.[1] ?? 0);
    const isThread = (flags & CLONE_THREAD) !== 0;
    pendingClone.set(tid, isThread);
    const child = /= (\d+)$/.exec(rest)?.[1];
    if (isThread && child) threads.add(Number(child));
  }
  if (!ready) {
    // lgnet's own rings, made before the jail (io 'auto' or 'uring'): the fds the policy lets io_uring_enter name.
    if (name === 'io_uring_setup' && /^\d+$/.test(result)) rings.push(Number(result));
    if (tid === root && name === 'write' && rest.includes('\\"ev\\":\\"ready\\"')) ready = true;
    continue;
  }
  const args = name === 'clone' ? [Number(/flags=(0x[0-9a-f]+|\d+)/.exec(rest)?.[1] ?? NaN), null, null, null, null, null] : parseArgs(rest.replace(/\)\s+= .*$/, '').replace(/\s*<unfinished \.\.\.>$/, ''));
  calls.push({ tid, name, args, result });
}
if (!ready) throw new Error('the "ready" marker was not found in the trace');

const dataPathTids = new Set(calls.filter((c) => c.name === 'readv' || c.name === 'writev' || c.name === 'io_uring_enter').map((c) => c.tid));
const roleOf = (tid: number): 'main' | 'worker' | 'helper' => (tid === root ? 'main' : dataPathTids.has(tid) ? 'worker' : 'helper');

// ---- report ------------------------------------------------------------------------------------------
const programs: Record<Role, Uint8Array> = { main: compilePolicy('main', { arch, uringFds: rings }).program, worker: compilePolicy('worker', { arch, uringFds: rings }).program };
const ALLOW = SECCOMP_RET.ALLOW;
const ringTeardown = (c: Call): boolean => (c.name === 'close' || c.name === 'io_uring_register') && rings.includes(c.args[0] ?? -1);
const refused: string[] = [];
const byDesign = new Set<string>();
const byRole = new Map<string, Map<string, number>>();
for (const c of calls) {
  const role = roleOf(c.tid);
  const counts = byRole.get(role) ?? new Map<string, number>();
  counts.set(c.name, (counts.get(c.name) ?? 0) + 1);
  byRole.set(role, counts);
  const nr = table[c.name];
  if (nr === undefined) continue;
  const checks: Role[] = role === 'worker' ? ['main', 'worker'] : ['main'];
  for (const r of checks) {
    // Unknown (non-numeric) args are taken as 0; pins on them may then misjudge: listed as "(args?)".
    const unknown = c.args.some((a) => a === null);
    const v = evaluate(programs[r], { arch: AUDIT_ARCH[arch], nr, args: c.args.map((a) => a ?? 0) });
    // A ring's own teardown (native/uring.cc ~Ring: unregister its tap, close) is refused in the jail by
    // design (docs/SECURITY.md, "io_uring in the jail"), and ignores the refusal.
    if (ringTeardown(c) && v !== ALLOW) byDesign.add(`${c.name}(ring fd ${c.args[0]})`);
    else if (v !== ALLOW && !(c.name === 'clone3')) {
      refused.push(`${r} filter refuses ${role} ${c.tid}: ${c.name}(${c.args.map((a) => (a === null ? '?' : `0x${(a >>> 0).toString(16)}`)).join(', ')})${unknown ? ' (args?)' : ''} = ${c.result}`);
    }
  }
}

console.log(`lgnet seccomp trace: ${seconds}s of load, jail ${withJail ? 'on' : 'off'}, ${arch}; fixture said: ${out.trim().split('\n').pop()}`);
console.log(`threads of the lgnet process: ${threads.size} (main ${root}, workers ${[...dataPathTids].join(' ')})`);
for (const role of ['main', 'worker', 'helper']) {
  const counts = byRole.get(role);
  if (!counts) continue;
  console.log(`\n[${role}] ${counts.size} distinct syscalls while serving`);
  for (const [name, n] of [...counts].sort((a, b) => b[1] - a[1])) console.log(`  ${String(n).padStart(8)}  ${name}`);
}
const denied = calls.filter((c) => /^-1 EPERM/.test(c.result) && !ringTeardown(c));
if (withJail) {
  console.log(`\nEPERM results while serving: ${denied.length}`);
  for (const c of denied.slice(0, 50)) console.log(`  ${roleOf(c.tid)} ${c.tid}: ${c.name} = ${c.result}`);
}
if (byDesign.size > 0) console.log(`\nrefused by design, and ignored (a ring's teardown): ${[...byDesign].join(', ')}`);
const uniq = [...new Set(refused)];
const sure = uniq.filter((r) => !r.includes('(args?)'));
console.log(`\nobserved calls the compiled policy would refuse: ${sure.length} (+${uniq.length - sure.length} with arguments strace did not print as numbers)`);
for (const r of uniq.slice(0, 100)) console.log(`  ${r}`);
process.exitCode = sure.length > 0 || (withJail && denied.length > 0) ? 1 : 0;
