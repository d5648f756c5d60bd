/**
 * The SIGBUS guard (native/guard.cc): a mapped file that shrinks turns into private zero pages and a
 * fault count, in any thread, jailed or not; a SIGBUS that is not lgnet's (a file mapped outside the
 * registry, or a signal sent with kill) still kills the process with SIGBUS. Faults are made in child
 * processes (test/native/children/sigbus.ts) wherever a process may die, and in this process only where
 * the guard must hold.
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, afterEach, describe, expect, it } from 'vitest';

import * as native from '../../native/index.ts';
import { spawnNativeWorker, terminateAllWorkers, within } from './worker-client.ts';

const CHILD = fileURLToPath(new URL('./children/sigbus.ts', import.meta.url));
const FIXTURE = fileURLToPath(new URL('./fixtures/unguarded.c', import.meta.url));

const fds: number[] = [];
const ids: number[] = [];
afterEach(async () => {
  await terminateAllWorkers();
  for (const id of ids.splice(0)) {
    try {
      native.munmap(id);
    } catch {
      /* released by the test */
    }
  }
  for (const fd of fds.splice(0)) native.close(fd);
});
afterAll(terminateAllWorkers);

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  lines: Array<Record<string, unknown>>;
  stderr: string;
}

/** Runs the child; `onLine` may act on its output (send it a signal). Killed by pid after 30 s. */
function runChild(args: string[], onLine?: (line: Record<string, unknown>, pid: number) => void): Promise<ChildResult> {
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Array<Record<string, unknown>> = [];
  let out = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    let nl: number;
    while ((nl = out.indexOf('\n')) >= 0) {
      const line = out.slice(0, nl);
      out = out.slice(nl + 1);
      try {
        const m = JSON.parse(line) as Record<string, unknown>;
        lines.push(m);
        onLine?.(m, child.pid!);
      } catch {
        stderr += `${line}\n`;
      }
    }
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, lines, stderr });
    });
  });
}

/** Builds the unguarded fixture addon; null with the reason when gcc or Node's headers are missing. */
function buildFixture(): { path: string | null; why: string } {
  const include = ['/usr/include/node', join(process.execPath, '../../include/node')].find((d) => existsSync(join(d, 'node_api.h')));
  if (!include) return { path: null, why: 'node_api.h not found (install the nodejs headers)' };
  const out = join(mkdtempSync(join(tmpdir(), 'lgnet-unguarded-')), 'unguarded.node');
  const r = spawnSync('gcc', ['-shared', '-fPIC', '-O1', `-I${include}`, '-o', out, FIXTURE], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return { path: null, why: `gcc failed: ${r.error?.message ?? r.stderr}` };
  return { path: out, why: '' };
}

/** A hugetlbfs mount with free huge pages, or the reason there is none. */
function hugetlbfs(): { dir: string | null; why: string } {
  const meminfo = readFileSync('/proc/meminfo', 'utf8');
  const free = Number(/HugePages_Free:\s+(\d+)/.exec(meminfo)?.[1] ?? 0);
  const size = Number(/Hugepagesize:\s+(\d+) kB/.exec(meminfo)?.[1] ?? 0);
  const mount = readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' ')).find((f) => f[2] === 'hugetlbfs');
  if (size !== 2048) return { dir: null, why: `huge pages are ${size} kB here; the child assumes 2048 kB` };
  if (free < 2) return { dir: null, why: `${free} huge pages free (vm.nr_hugepages is not set on this machine)` };
  if (!mount) return { dir: null, why: 'no hugetlbfs is mounted' };
  return { dir: mount[1]!, why: '' };
}

function mapsMention(name: string): boolean {
  return readFileSync('/proc/self/maps', 'utf8').includes(name);
}

describe('SIGBUS guard, in this process', () => {
  it('is installed when the addon loads', () => {
    expect(native.memoryGuard().installed).toBe(true);
  });

  it('an unsealable memfd truncated under its mapping: zeros, one fault counted on that mapping only, the other mappings intact', () => {
    const fd = native.memfdCreate('lgnet-guard-a', 1 << 20, { sealable: false });
    fds.push(fd);
    const id = native.mmap(fd, 0, 1 << 20);
    ids.push(id);
    const sealedFd = native.memfdCreate('lgnet-guard-sealed', 1 << 16);
    fds.push(sealedFd);
    const sealed = native.mmap(sealedFd, 0, 1 << 16);
    ids.push(sealed);
    const u8 = new Uint8Array(native.mappingBuffer(id));
    const s8 = new Uint8Array(native.mappingBuffer(sealed));
    u8.fill(0x11);
    s8.fill(0x22);
    // The sealed one cannot shrink: what the guard is the fallback for.
    expect(() => ftruncateSync(sealedFd, 0)).toThrow(/EPERM/);
    const watch = new native.FaultWatch();
    const before = native.memoryFaults();
    expect(watch.check([id, sealed])).toBe(-1);

    ftruncateSync(fd, 4096);
    expect(mapsMention('memfd:lgnet-guard-a')).toBe(true);
    expect(u8[8192]).toBe(0); // past the end: a SIGBUS, absorbed
    expect(native.memoryFaults() - before).toBe(1);
    expect(native.mappingFaults(id)).toBe(1);
    expect(native.mappingFaults(sealed)).toBe(0);
    expect(watch.check([sealed])).toBe(-1);
    expect(watch.check([sealed, id])).toBe(id);
    // The whole mapping is now private zero pages, the page still in the file included, and no longer
    // the file's: the memfd is gone from this process's maps.
    expect(u8[0]).toBe(0);
    expect(u8.every((b) => b === 0)).toBe(true);
    expect(mapsMention('memfd:lgnet-guard-a')).toBe(false);
    u8[100] = 5; // writable, private
    expect(u8[100]).toBe(5);
    expect(native.mappingFaults(id)).toBe(1); // no further fault: nothing is left to fault on
    expect(s8.every((b) => b === 0x22)).toBe(true);
    expect(mapsMention('memfd:lgnet-guard-sealed')).toBe(true);
  });

  it('a /dev/shm file truncated: the same', () => {
    const path = `/dev/shm/lgnet-guard-${process.pid}`;
    const fd = openSync(path, 'w+', 0o600);
    try {
      ftruncateSync(fd, 1 << 16);
      const id = native.mmap(fd, 0, 1 << 16);
      ids.push(id);
      const u8 = new Uint8Array(native.mappingBuffer(id));
      u8.fill(0x33);
      ftruncateSync(fd, 0);
      expect(u8[1]).toBe(0);
      expect(native.mappingFaults(id)).toBe(1);
    } finally {
      closeSync(fd);
      unlinkSync(path);
    }
  });

  it('a fault in a worker thread is absorbed there, and every thread then sees zeros', async () => {
    const fd = native.memfdCreate('lgnet-guard-w', 1 << 16, { sealable: false });
    fds.push(fd);
    const id = native.mmap(fd, 0, 1 << 16);
    ids.push(id);
    const u8 = new Uint8Array(native.mappingBuffer(id));
    u8.fill(0x44);
    const w = spawnNativeWorker();
    expect(await within(w.call('attach', id), 10_000, 'attach')).toBe(1 << 16);
    expect(await w.call('peek', id, 8192, 2)).toEqual([0x44, 0x44]);
    ftruncateSync(fd, 0);
    expect(await within(w.call('peek', id, 8192, 2), 10_000, 'peek after truncate')).toEqual([0, 0]);
    expect(native.mappingFaults(id)).toBe(1);
    expect(u8[8192]).toBe(0);
    expect(native.mappingFaults(id)).toBe(1);
  });

  it('released while its fault is counted, then fresh memory: a clean id and no fault carried over', () => {
    const fd = native.memfdCreate('lgnet-guard-r', 1 << 16, { sealable: false });
    fds.push(fd);
    const id = native.mmap(fd, 0, 1 << 16);
    const u8 = new Uint8Array(native.mappingBuffer(id));
    ftruncateSync(fd, 0);
    expect(u8[0]).toBe(0);
    expect(native.mappingFaults(id)).toBe(1);
    native.munmap(id);
    expect(() => native.mappingFaults(id)).toThrow(expect.objectContaining({ code: 'EBADF' }));
    expect(u8[0]).toBe(0); // a stale view still reads zeros
    const watch = new native.FaultWatch();
    expect(watch.check([id])).toBe(-1); // a released id is no longer anyone's concern

    ftruncateSync(fd, 1 << 16);
    const again = native.mmap(fd, 0, 1 << 16);
    ids.push(again);
    expect(again).not.toBe(id);
    expect(native.mappingFaults(again)).toBe(0);
    const v8 = new Uint8Array(native.mappingBuffer(again));
    v8[7] = 9;
    expect(v8[7]).toBe(9);
    expect(native.mappingFaults(again)).toBe(0);
    expect(watch.check([again])).toBe(-1);
  });
});

describe('SIGBUS guard, in a child process', () => {
  const fixture = buildFixture();
  const huge = hugetlbfs();
  if (!fixture.path) console.log(`skipping the unguarded-fault children: ${fixture.why}`);
  if (!huge.dir) console.log(`skipping hugetlbfs: ${huge.why}`);
  afterAll(() => {
    if (fixture.path) rmSync(join(fixture.path, '..'), { recursive: true, force: true });
  });

  for (const jail of [false, true]) {
    const j = jail ? ['--jail'] : [];
    const tag = jail ? ' (jailed: main and worker seccomp filters)' : '';

    for (const kind of ['memfd', 'shm']) {
      it(`${kind} truncated, then read by native code and JavaScript: the child lives${tag}`, async () => {
        const r = await runChild(['guarded', kind, ...j]);
        expect(r.signal, r.stderr).toBe(null);
        expect(r.code, r.stderr).toBe(0);
        const lived = r.lines.find((l) => l['ev'] === 'lived');
        expect(lived, r.stderr).toMatchObject({ woke: native.WAKE.AVAIL, faultsNative: 1, past: 0, wrote: 7, first: 0, faults: 1, total: 1, other: true });
        expect(r.lines[0]).toMatchObject({ ev: 'truncated', jailed: jail });
      });
    }

    it.skipIf(!huge.dir)(`hugetlbfs file truncated: the child lives${tag}`, async () => {
      const r = await runChild(['guarded', `huge:${huge.dir}`, ...j]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.lines.find((l) => l['ev'] === 'lived'), r.stderr).toMatchObject({ past: 0, faults: 1 });
    });

    it.skipIf(!fixture.path)(`a fault outside every lgnet mapping still kills the child with SIGBUS${tag}`, async () => {
      const r = await runChild(['outside', fixture.path!, ...j]);
      expect(r.lines.map((l) => l['ev'])).toEqual(['touching']);
      // The child had a guarded mapping that faulted (so the guard was live and looked), and died anyway.
      expect(r.lines[0]).toMatchObject({ ok: true, guardFaults: 1, installed: true });
      expect(r.signal, r.stderr).toBe('SIGBUS');
    });

    it(`SIGBUS sent with kill still kills the child with SIGBUS${tag}`, async () => {
      const r = await runChild(['sent', ...j], (l, pid) => {
        if (l['ev'] === 'waiting') process.kill(pid, 'SIGBUS');
      });
      expect(r.lines.map((l) => l['ev'])).toEqual(['waiting']);
      expect(r.lines[0]).toMatchObject({ installed: true });
      expect(r.signal, r.stderr).toBe('SIGBUS');
    });
  }
});
