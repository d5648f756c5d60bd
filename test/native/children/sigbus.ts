/**
 * Child process for guard.test.ts: makes one SIGBUS happen to itself (never to the test runner) and
 * prints JSON lines on stdout as it goes, so the parent can tell where it died, if it died.
 *
 *   guarded memfd|shm|huge:DIR [--jail]
 *                                lgnet maps an unsealable memfd, a /dev/shm file or a file on the
 *                                hugetlbfs at DIR (2 MiB pages: truncated to 0), the file is
 *                                truncated, then JavaScript and native code (waitKick) read it: lives
 *   outside ADDON [--jail]       test/native/fixtures/unguarded.c maps a file outside lgnet's registry
 *                                and reads past its end: must die of SIGBUS
 *   sent [--jail]                waits for the parent's kill(pid, SIGBUS): must die of SIGBUS
 *
 * --jail: no_new_privs, then lgnet's `main` filter (TSYNC) and its `worker` filter stacked on this
 * thread, after everything is open and before the fault: the handler must get by with what both allow.
 */
import { closeSync, ftruncateSync, openSync, unlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as native from '../../../native/index.ts';
import { compilePolicy } from '../../../sandbox/jail-policy.ts';

const say = (o: Record<string, unknown>): void => void process.stdout.write(`${JSON.stringify(o)}\n`);
const [mode, arg, flag] = process.argv.slice(2);
const jailed = process.argv.includes('--jail');

function jail(): void {
  const main = compilePolicy('main').program;
  const worker = compilePolicy('worker').program;
  native.setNoNewPrivs();
  native.seccompInstall(main, { tsync: true });
  native.seccompInstall(worker, { tsync: false });
}

const SIZE = 4 << 20; // two 2 MiB huge pages

if (mode === 'guarded') {
  let fd: number;
  if (arg === 'shm' || arg?.startsWith('huge:')) {
    const dir = arg === 'shm' ? '/dev/shm' : arg.slice(5);
    const path = `${dir}/lgnet-sigbus-${process.pid}`;
    fd = openSync(path, 'w+', 0o600);
    unlinkSync(path);
    ftruncateSync(fd, SIZE);
  } else {
    fd = native.memfdCreate('lgnet-sigbus', SIZE, { sealable: false });
  }
  const id = native.mmap(fd, 0, SIZE);
  const other = native.mmapAnonymous(4096);
  const u8 = new Uint8Array(native.mappingBuffer(id));
  const o8 = new Uint8Array(native.mappingBuffer(other));
  u8.fill(0xab, 0, 8192);
  o8.fill(0x5a);
  const before = native.memoryFaults();
  ftruncateSync(fd, arg?.startsWith('huge:') ? 0 : 4096); // the first page stays in the file; the rest is gone
  closeSync(fd);
  const kick = native.eventfdCreate({ nonblocking: true });
  if (jailed || flag === '--jail') jail();
  say({ ev: 'truncated', jailed });
  // Native code first: waitKick reads the watched word (at 64 KiB, past the end) and finds it moved.
  const woke = native.waitKick(kick, id, 65536, 0x1234, 100);
  const faultsNative = native.memoryFaults() - before;
  // Then JavaScript: a read past the end, a write, and the first page, which was still in the file.
  const past = u8[100_000];
  u8[200_000] = 7;
  say({
    ev: 'lived', woke, faultsNative, past, wrote: u8[200_000], first: u8[0], faults: native.mappingFaults(id),
    total: native.memoryFaults() - before, other: o8.every((b) => b === 0x5a), guard: native.memoryGuard(),
  });
} else if (mode === 'outside') {
  const addon = createRequire(import.meta.url)(arg!) as { prepare(path: string): boolean; touch(): number };
  const path = `/dev/shm/lgnet-unguarded-${process.pid}`;
  const ok = addon.prepare(path);
  unlinkSync(path);
  // An lgnet mapping that did fault, so the guard has a live entry it must not mistake for this one.
  const fd = native.memfdCreate('lgnet-sigbus', 8192, { sealable: false });
  const id = native.mmap(fd, 0, 8192);
  ftruncateSync(fd, 0);
  new Uint8Array(native.mappingBuffer(id))[4096];
  if (jailed) jail();
  say({ ev: 'touching', ok, guardFaults: native.mappingFaults(id), installed: native.memoryGuard().installed });
  say({ ev: 'survived', value: addon.touch() });
} else if (mode === 'sent') {
  // The parent sends SIGBUS (kill(2): si_code SI_USER, no faulting instruction to run again).
  if (jailed) jail();
  say({ ev: 'waiting', installed: native.memoryGuard().installed });
  setTimeout(() => say({ ev: 'survived' }), 10_000);
} else {
  say({ ev: 'usage', mode });
}
