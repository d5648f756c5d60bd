/**
 * Child process for hardening.test.ts: applies one hardening primitive to itself (never to the test
 * runner) and prints a JSON report on stdout.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';

import {
  chroot,
  getrlimit,
  NativeError,
  seccompInstall,
  setgroups,
  setNoNewPrivs,
  setNotDumpable,
  setresgid,
  setresuid,
  setrlimit,
} from '../../../native/index.ts';

function statusField(field: string, task?: string): string {
  const path = task ? `/proc/self/task/${task}/status` : '/proc/self/status';
  const line = readFileSync(path, 'utf8').split('\n').find((l) => l.startsWith(`${field}:`));
  return line?.slice(field.length + 1).trim() ?? '';
}

function errorOf(fn: () => unknown): { code?: string; syscall?: string; native: boolean } | null {
  try {
    fn();
    return null;
  } catch (e) {
    const err = e as NativeError;
    return { code: err.code, syscall: err.syscall, native: e instanceof NativeError };
  }
}

// Classic BPF: allow everything except uname, which fails with EPERM.
function denyUname(): Uint8Array {
  const arch = process.arch === 'x64' ? { audit: 0xc000003e, uname: 63 } : process.arch === 'arm64' ? { audit: 0xc00000b7, uname: 160 } : null;
  if (!arch) throw new Error(`no syscall table for ${process.arch}`);
  const BPF_LD_W_ABS = 0x20, BPF_JEQ_K = 0x15, BPF_RET_K = 0x06;
  const SECCOMP_RET_ALLOW = 0x7fff0000, SECCOMP_RET_ERRNO = 0x00050000, EPERM = 1;
  const insns: Array<[number, number, number, number]> = [
    [BPF_LD_W_ABS, 0, 0, 4], // A = seccomp_data.arch
    [BPF_JEQ_K, 0, 3, arch.audit], // other arch: allow
    [BPF_LD_W_ABS, 0, 0, 0], // A = seccomp_data.nr
    [BPF_JEQ_K, 0, 1, arch.uname],
    [BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM],
    [BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW],
  ];
  const out = new Uint8Array(insns.length * 8);
  const dv = new DataView(out.buffer);
  insns.forEach(([code, jt, jf, k], i) => {
    dv.setUint16(i * 8, code, true);
    dv.setUint8(i * 8 + 2, jt);
    dv.setUint8(i * 8 + 3, jf);
    dv.setUint32(i * 8 + 4, k, true);
  });
  return out;
}

const report: Record<string, unknown> = {};
switch (process.argv[2]) {
  case 'dumpable': {
    // Another process of the same uid, with no capability, reads /proc/<this pid>/environ (the check
    // that guards /proc/<pid>/mem and ptrace) while this process is dumpable, and is refused once it is
    // not. The parent starts this child without capabilities (root's would bypass the check); the peer
    // is an inline script, so it loads nothing from the checkout. Dropping to another uid instead would
    // show nothing: a uid change already clears dumpable (fs.suid_dumpable is 0 by default).
    const peek = (): string => {
      const r = spawnSync(process.execPath, ['-e', `try { require('fs').readFileSync('/proc/${process.pid}/environ'); console.log('read'); } catch (e) { console.log(e.code); }`], { encoding: 'utf8', timeout: 10_000 });
      return r.stdout.trim() || `peer failed: ${r.status} ${r.error?.message ?? r.stderr}`;
    };
    report.capEff = statusField('CapEff');
    report.before = peek();
    setNotDumpable();
    report.after = peek();
    break;
  }
  case 'nnp':
    report.before = statusField('NoNewPrivs');
    setNoNewPrivs();
    report.after = statusField('NoNewPrivs');
    break;
  case 'seccomp': {
    report.unameBefore = hostname().length > 0; // gethostname() is uname(2) in glibc
    report.seccompBefore = statusField('Seccomp');
    setNoNewPrivs();
    seccompInstall(denyUname());
    report.seccompAfter = statusField('Seccomp');
    report.threads = readdirSync('/proc/self/task').map((t) => statusField('Seccomp', t));
    try {
      hostname();
      report.uname = 'allowed';
    } catch (e) {
      report.uname = (e as NodeJS.ErrnoException).message;
    }
    report.badFilter = errorOf(() => seccompInstall(new Uint8Array(8))); // ld [0] only: no return
    break;
  }
  case 'rlimit':
    report.initialFsize = getrlimit('fsize');
    setrlimit('core', 0, 0);
    report.core = getrlimit('core');
    setrlimit('nofile', 256, 512);
    report.nofile = getrlimit('nofile');
    setrlimit('fsize', 1 << 30, Infinity); // Infinity in, as RLIM_INFINITY
    report.fsize = getrlimit('fsize');
    report.softAboveHard = errorOf(() => setrlimit('nofile', 2048, 1024));
    break;
  case 'chroot':
    chroot(process.argv[3]!);
    report.inside = existsSync('/empty');
    report.outside = existsSync('/proc/self/status');
    break;
  case 'ids': {
    setgroups([]);
    setresgid(65534, 65534, 65534);
    setresuid(65534, 65534, 65534);
    report.uid = statusField('Uid');
    report.gid = statusField('Gid');
    report.groups = statusField('Groups');
    report.taskUids = readdirSync('/proc/self/task').map((t) => statusField('Uid', t));
    report.regain = errorOf(() => setresuid(0, 0, 0));
    break;
  }
  default:
    throw new Error(`unknown mode ${process.argv[2]}`);
}
process.stdout.write(JSON.stringify(report));
