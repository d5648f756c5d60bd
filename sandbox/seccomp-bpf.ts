/**
 * A small classic-BPF assembler and seccomp filter compiler: from policy data (seccomp-policy.ts) to
 * the `struct sock_filter[]` bytes that native.seccompInstall() hands to seccomp(2).
 *
 * The program it emits, for one role and one architecture:
 *
 *     ld  seccomp_data.arch
 *     jeq AUDIT_ARCH_<this arch> ? next : BAD_ARCH         a syscall of another ABI (int 0x80 on x86_64)
 *     ld  seccomp_data.nr
 *     jset 0x40000000 ? X32 : next                         x86_64 only: the x32 ABI (nr | __X32_SYSCALL_BIT)
 *     ── binary search over the sorted syscall numbers ───  jgt pivot ? (ja right) : left   O(log n) compares
 *        leaf: jeq nr ? (ja handler) : next … ret DEFAULT
 *     handler(nr): unconditional ──▶ ret ALLOW (shared)
 *                  pinned args   ──▶ for each alternative: check each pin, fail → next alternative
 *                                    all pins hold → ret ALLOW; no alternative holds → ret DEFAULT
 *                  errno rule    ──▶ ret ERRNO(e)       (clone3 → ENOSYS so glibc falls back to clone)
 *
 * Unconditionally allowed syscalls take a path that reads nothing but arch and nr, so Linux ≥ 5.11
 * caches them as "always allow" (the seccomp action cache) and they cost nothing at run time.
 *
 * Jumps: classic BPF only jumps forward; a conditional jump's offsets are 8 bits (≤ 255), `ja` has 32.
 * The assembler works on labels and relaxes any conditional branch that would not fit into a short
 * branch to a `ja` trampoline placed right after it, so the layout of the tree never matters.
 *
 * Arguments: seccomp_data.args[i] is a u64 at offset 16 + 8·i; both architectures here are little
 * endian, so its low word is at +0 and its high word at +4. A pin compares the low word only, unless
 * it says `wide: true`: every pinned argument in the policy is a C `int`/`unsigned int` in the kernel's
 * signature (the kernel ignores the high word), or a flags word whose defined bits all sit in the low
 * word (clone's flags: sys_clone takes lower_32_bits(flags); mmap's prot and flags). Pointers and pids
 * compared to a value are `wide`.
 */

import { LgnetError } from '../errors/index.ts';

// ---- constants (linux/filter.h, linux/bpf_common.h, linux/seccomp.h, linux/audit.h) --------------------

/** Classic BPF opcodes (the subset seccomp accepts). */
export const BPF = {
  LD_W_ABS: 0x20, // BPF_LD | BPF_W | BPF_ABS
  ALU_AND_K: 0x54, // BPF_ALU | BPF_AND | BPF_K
  JMP_JA: 0x05, // BPF_JMP | BPF_JA
  JMP_JEQ_K: 0x15, // BPF_JMP | BPF_JEQ | BPF_K
  JMP_JGT_K: 0x25, // BPF_JMP | BPF_JGT | BPF_K
  JMP_JGE_K: 0x35, // BPF_JMP | BPF_JGE | BPF_K
  JMP_JSET_K: 0x45, // BPF_JMP | BPF_JSET | BPF_K
  RET_K: 0x06, // BPF_RET | BPF_K
} as const;

/** seccomp return actions (the high 16 bits; the low 16 carry data such as the errno). */
export const SECCOMP_RET = {
  KILL_PROCESS: 0x8000_0000,
  KILL_THREAD: 0x0000_0000,
  TRAP: 0x0003_0000,
  ERRNO: 0x0005_0000,
  USER_NOTIF: 0x7fc0_0000,
  TRACE: 0x7ff0_0000,
  LOG: 0x7ffc_0000,
  ALLOW: 0x7fff_0000,
} as const;

/** AUDIT_ARCH_* values: EM_X86_64 / EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE. */
export const AUDIT_ARCH = { x86_64: 0xc000_003e, aarch64: 0xc000_00b7 } as const;
export type SeccompArch = keyof typeof AUDIT_ARCH;

/** x86_64: syscall numbers with this bit belong to the x32 ABI. */
export const X32_SYSCALL_BIT = 0x4000_0000;

/** struct seccomp_data offsets. */
export const SECCOMP_DATA = {
  nr: 0,
  arch: 4,
  instructionPointer: 8,
  argLow: (i: number): number => 16 + 8 * i,
  argHigh: (i: number): number => 20 + 8 * i,
} as const;

/** Bytes per struct sock_filter (u16 code, u8 jt, u8 jf, u32 k). */
export const INSN_BYTES = 8;
/** BPF_MAXINSNS. */
export const MAX_INSNS = 4096;

/** A seccomp action as policy data names it. */
export type Action =
  | { kind: 'allow' }
  | { kind: 'errno'; errno: number }
  | { kind: 'kill-process' }
  | { kind: 'trap' }
  | { kind: 'log' };

export function actionValue(a: Action): number {
  switch (a.kind) {
    case 'allow': return SECCOMP_RET.ALLOW;
    case 'errno':
      if (!Number.isInteger(a.errno) || a.errno < 1 || a.errno > 4095) throw new RangeError(`errno ${a.errno} out of range 1..4095`);
      return (SECCOMP_RET.ERRNO | a.errno) >>> 0;
    case 'kill-process': return SECCOMP_RET.KILL_PROCESS;
    case 'trap': return SECCOMP_RET.TRAP;
    case 'log': return SECCOMP_RET.LOG;
  }
}

// ---- the assembler ------------------------------------------------------------------------------------

/** A jump target: a label name. */
export type Label = string;

/** One instruction before assembly. Conditional jumps name labels, or null for "the next instruction". */
export type Item =
  | { op: 'label'; name: Label }
  | { op: 'ld'; offset: number }
  | { op: 'and'; k: number }
  | { op: 'ret'; k: number }
  | { op: 'ja'; target: Label }
  | { op: 'jeq' | 'jgt' | 'jge' | 'jset'; k: number; jt: Label | null; jf: Label | null };

/** Stable codes of the seccomp assembler. */
export const BPF_ERROR = {
  /** The policy does not assemble (a jump too far, an unknown label, too many instructions): a bug in the policy. */
  ASSEMBLY: 'LGNET_BPF_ASSEMBLY',
} as const;

/** The seccomp policy does not compile into a BPF program. */
export class BpfAssemblyError extends LgnetError {
  declare readonly code: (typeof BPF_ERROR)['ASSEMBLY'];
  constructor(message: string) {
    super(BPF_ERROR.ASSEMBLY, message);
  }
}

const JUMP_CODE = { jeq: BPF.JMP_JEQ_K, jgt: BPF.JMP_JGT_K, jge: BPF.JMP_JGE_K, jset: BPF.JMP_JSET_K } as const;

interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

/**
 * Assembles items into struct sock_filter bytes. Labels resolve forward only; a conditional branch
 * farther than 255 instructions gets a `ja` trampoline right after it (relaxation repeats until every
 * branch fits). Throws BpfAssemblyError on an unknown or backward label, or a program over 4096.
 */
export function assemble(input: readonly Item[]): Uint8Array {
  let items: Item[] = [...input];
  let trampolines = 0;
  for (;;) {
    // Layout: label → index of the next instruction.
    const at = new Map<Label, number>();
    let n = 0;
    for (const it of items) {
      if (it.op === 'label') {
        if (at.has(it.name)) throw new BpfAssemblyError(`label ${it.name} defined twice`);
        at.set(it.name, n);
      } else n++;
    }
    const resolve = (l: Label, from: number): number => {
      const t = at.get(l);
      if (t === undefined) throw new BpfAssemblyError(`undefined label ${l}`);
      const off = t - (from + 1);
      if (off < 0) throw new BpfAssemblyError(`backward jump to ${l} (classic BPF jumps forward only)`);
      return off;
    };
    // Find the first conditional branch that does not fit, and give it trampolines.
    let idx = 0;
    let relaxed = false;
    const next: Item[] = [];
    for (const it of items) {
      if (it.op === 'label') {
        next.push(it);
        continue;
      }
      if (!relaxed && (it.op === 'jeq' || it.op === 'jgt' || it.op === 'jge' || it.op === 'jset')) {
        const tFar = it.jt !== null && resolve(it.jt, idx) > 255;
        const fFar = it.jf !== null && resolve(it.jf, idx) > 255;
        if (tFar || fFar) {
          relaxed = true;
          const tl = `__tramp${trampolines++}`;
          const fl = `__tramp${trampolines++}`;
          const after = `__tramp${trampolines++}`;
          // jcc → jt: trampoline A (ja jt) / jf: trampoline B (ja jf) or the instruction after them.
          next.push({ ...it, jt: tFar ? tl : it.jt === null ? after : it.jt, jf: fFar ? fl : it.jf === null ? after : it.jf });
          if (tFar) next.push({ op: 'label', name: tl }, { op: 'ja', target: it.jt! });
          if (fFar) next.push({ op: 'label', name: fl }, { op: 'ja', target: it.jf! });
          next.push({ op: 'label', name: after });
          idx++;
          continue;
        }
      }
      next.push(it);
      idx++;
    }
    if (relaxed) {
      items = next;
      continue;
    }
    // Emit.
    const insns: Insn[] = [];
    let i = 0;
    for (const it of items) {
      switch (it.op) {
        case 'label': continue;
        case 'ld': insns.push({ code: BPF.LD_W_ABS, jt: 0, jf: 0, k: it.offset }); break;
        case 'and': insns.push({ code: BPF.ALU_AND_K, jt: 0, jf: 0, k: it.k >>> 0 }); break;
        case 'ret': insns.push({ code: BPF.RET_K, jt: 0, jf: 0, k: it.k >>> 0 }); break;
        case 'ja': insns.push({ code: BPF.JMP_JA, jt: 0, jf: 0, k: resolve(it.target, i) }); break;
        default:
          insns.push({
            code: JUMP_CODE[it.op],
            jt: it.jt === null ? 0 : resolve(it.jt, i),
            jf: it.jf === null ? 0 : resolve(it.jf, i),
            k: it.k >>> 0,
          });
      }
      i++;
    }
    if (insns.length === 0 || insns.length > MAX_INSNS) throw new BpfAssemblyError(`program has ${insns.length} instructions; seccomp takes 1..${MAX_INSNS}`);
    const out = new Uint8Array(insns.length * INSN_BYTES);
    const dv = new DataView(out.buffer);
    insns.forEach((x, j) => {
      dv.setUint16(j * 8, x.code, true);
      dv.setUint8(j * 8 + 2, x.jt);
      dv.setUint8(j * 8 + 3, x.jf);
      dv.setUint32(j * 8 + 4, x.k, true);
    });
    return out;
  }
}

/** Decodes struct sock_filter bytes (for tests, verification and disassembly). */
export function decode(prog: Uint8Array): Insn[] {
  if (prog.length % INSN_BYTES !== 0) throw new BpfAssemblyError(`program length ${prog.length} is not a multiple of ${INSN_BYTES}`);
  const dv = new DataView(prog.buffer, prog.byteOffset, prog.byteLength);
  const out: Insn[] = [];
  for (let o = 0; o < prog.length; o += 8) out.push({ code: dv.getUint16(o, true), jt: dv.getUint8(o + 2), jf: dv.getUint8(o + 3), k: dv.getUint32(o + 4, true) });
  return out;
}

/**
 * Checks what the kernel's seccomp_check_filter and sk_chk_filter check, so that a broken program
 * fails here, in TypeScript, with a message: only seccomp's opcodes, aligned loads inside
 * seccomp_data, every jump inside the program, and every path ending in a return (the last
 * instruction is a return and no jump leaves the program).
 */
export function verify(prog: Uint8Array): void {
  const insns = decode(prog);
  if (insns.length === 0 || insns.length > MAX_INSNS) throw new BpfAssemblyError(`program has ${insns.length} instructions`);
  insns.forEach((x, i) => {
    const rest = insns.length - 1 - i;
    switch (x.code) {
      case BPF.LD_W_ABS:
        if (x.k % 4 !== 0 || x.k >= 64) throw new BpfAssemblyError(`insn ${i}: load at ${x.k} is outside seccomp_data or unaligned`);
        break;
      case BPF.ALU_AND_K:
      case BPF.RET_K:
        break;
      case BPF.JMP_JA:
        if (x.k >= rest) throw new BpfAssemblyError(`insn ${i}: ja +${x.k} leaves the program`);
        break;
      case BPF.JMP_JEQ_K:
      case BPF.JMP_JGT_K:
      case BPF.JMP_JGE_K:
      case BPF.JMP_JSET_K:
        if (x.jt >= rest || x.jf >= rest) throw new BpfAssemblyError(`insn ${i}: branch +${x.jt}/+${x.jf} leaves the program`);
        break;
      default:
        throw new BpfAssemblyError(`insn ${i}: opcode 0x${x.code.toString(16)} is not one seccomp accepts here`);
    }
  });
  if (insns[insns.length - 1]!.code !== BPF.RET_K) throw new BpfAssemblyError('the program does not end in a return');
}

/**
 * Runs a program on a seccomp_data in TypeScript: what the kernel would answer. Used by tests and by
 * scripts/seccomp-trace.ts to check an observed syscall against the policy without a kernel.
 */
export function evaluate(prog: Uint8Array, data: { arch: number; nr: number; args?: ReadonlyArray<number | bigint>; ip?: bigint }): number {
  const insns = decode(prog);
  const words = new Uint32Array(16);
  words[0] = data.nr >>> 0;
  words[1] = data.arch >>> 0;
  const ip = data.ip ?? 0n;
  words[2] = Number(ip & 0xffff_ffffn);
  words[3] = Number(ip >> 32n);
  for (let i = 0; i < 6; i++) {
    const v = BigInt.asUintN(64, BigInt(data.args?.[i] ?? 0));
    words[4 + 2 * i] = Number(v & 0xffff_ffffn);
    words[5 + 2 * i] = Number(v >> 32n);
  }
  let a = 0;
  let pc = 0;
  for (let steps = 0; steps <= insns.length; steps++) {
    const x = insns[pc];
    if (!x) throw new BpfAssemblyError(`pc ${pc} ran off the program`);
    switch (x.code) {
      case BPF.LD_W_ABS: a = words[x.k / 4]!; pc++; break;
      case BPF.ALU_AND_K: a = (a & x.k) >>> 0; pc++; break;
      case BPF.RET_K: return x.k >>> 0;
      case BPF.JMP_JA: pc += 1 + x.k; break;
      case BPF.JMP_JEQ_K: pc += 1 + (a === x.k ? x.jt : x.jf); break;
      case BPF.JMP_JGT_K: pc += 1 + (a > x.k ? x.jt : x.jf); break;
      case BPF.JMP_JGE_K: pc += 1 + (a >= x.k ? x.jt : x.jf); break;
      case BPF.JMP_JSET_K: pc += 1 + ((a & x.k) !== 0 ? x.jt : x.jf); break;
      default: throw new BpfAssemblyError(`opcode 0x${x.code.toString(16)}`);
    }
  }
  throw new BpfAssemblyError('no return reached');
}

/** Human-readable listing of a program (lgnet serve --print-policy --bpf, debugging). */
export function disassemble(prog: Uint8Array): string {
  const name: Record<number, string> = {
    [BPF.LD_W_ABS]: 'ld', [BPF.ALU_AND_K]: 'and', [BPF.JMP_JA]: 'ja', [BPF.JMP_JEQ_K]: 'jeq',
    [BPF.JMP_JGT_K]: 'jgt', [BPF.JMP_JGE_K]: 'jge', [BPF.JMP_JSET_K]: 'jset', [BPF.RET_K]: 'ret',
  };
  return decode(prog).map((x, i) => {
    const op = name[x.code] ?? `0x${x.code.toString(16)}`;
    const k = `0x${x.k.toString(16)}`;
    const line = x.code === BPF.JMP_JA ? `${op} ${i + 1 + x.k}`
      : x.code === BPF.LD_W_ABS ? `${op} [${x.k}]`
      : x.code === BPF.RET_K || x.code === BPF.ALU_AND_K ? `${op} ${k}`
      : `${op} ${k} ? ${i + 1 + x.jt} : ${i + 1 + x.jf}`;
    return `${String(i).padStart(4)}  ${line}`;
  }).join('\n');
}

// ---- the compiler ----------------------------------------------------------------------------------------

/** One condition on one argument. Values are named so that the policy prints readably. */
export type ArgPin =
  /** args[arg] equals one of the named values. */
  | { arg: number; oneOf: Readonly<Record<string, number>>; wide?: boolean }
  /** args[arg]'s low 32 bits equal none of the named values (an fd, an unsigned int). */
  | { arg: number; notOneOf: Readonly<Record<string, number>> }
  /** args[arg] has none of the named bits set. */
  | { arg: number; noneOf: Readonly<Record<string, number>> }
  /** args[arg] has all of the named bits set. */
  | { arg: number; allOf: Readonly<Record<string, number>> }
  /** (args[arg] & mask) equals one of the named values. */
  | { arg: number; mask: number; maskName: string; oneOf: Readonly<Record<string, number>> };

/** A syscall's verdict: allowed (optionally only when one of `when`'s alternatives holds), or an errno. */
export interface CompiledRule {
  nr: number;
  /** Alternatives: the call is allowed if every pin of any one alternative holds. Absent: always. */
  when?: ReadonlyArray<ReadonlyArray<ArgPin>>;
  /** Instead of allowing: answer this errno (e.g. clone3 → ENOSYS). */
  errno?: number;
}

export interface CompileOptions {
  arch: SeccompArch;
  /** For a syscall not on the list, or one whose pins do not hold. Default ERRNO(EPERM). */
  defaultAction?: Action;
  /** For a syscall of another ABI (another audit arch, or x32). Default: the default action. */
  badArchAction?: Action;
}

const EPERM = 1;

function pinValueWords(v: number): { lo: number; hi: number } {
  if (!Number.isSafeInteger(v)) throw new RangeError(`pin value ${v} is not a safe integer`);
  const b = BigInt.asUintN(64, BigInt(v));
  return { lo: Number(b & 0xffff_ffffn), hi: Number(b >> 32n) };
}

/** Emits the checks of one pin; jumps to `fail` when it does not hold, falls through when it does. */
function emitPin(out: Item[], p: ArgPin, fail: Label, fresh: () => Label): void {
  if (!Number.isInteger(p.arg) || p.arg < 0 || p.arg > 5) throw new RangeError(`pin on arg ${p.arg}: syscalls have args 0..5`);
  if ('notOneOf' in p) {
    const values = Object.values(p.notOneOf);
    if (values.length === 0) throw new RangeError(`pin on arg ${p.arg} has no values`);
    out.push({ op: 'ld', offset: SECCOMP_DATA.argLow(p.arg) });
    for (const v of values) out.push({ op: 'jeq', k: pinValueWords(v).lo, jt: fail, jf: null });
    return;
  }
  if ('noneOf' in p) {
    const m = Object.values(p.noneOf).reduce((x, y) => (x | y) >>> 0, 0);
    out.push({ op: 'ld', offset: SECCOMP_DATA.argLow(p.arg) }, { op: 'jset', k: m, jt: fail, jf: null });
    return;
  }
  if ('allOf' in p) {
    const m = Object.values(p.allOf).reduce((x, y) => (x | y) >>> 0, 0);
    out.push({ op: 'ld', offset: SECCOMP_DATA.argLow(p.arg) }, { op: 'and', k: m }, { op: 'jeq', k: m, jt: null, jf: fail });
    return;
  }
  const values = Object.values(p.oneOf);
  if (values.length === 0) throw new RangeError(`pin on arg ${p.arg} has no values`);
  const ok = fresh();
  if ('mask' in p) {
    out.push({ op: 'ld', offset: SECCOMP_DATA.argLow(p.arg) }, { op: 'and', k: p.mask >>> 0 });
    for (const v of values) out.push({ op: 'jeq', k: (v & p.mask) >>> 0, jt: ok, jf: null });
    out.push({ op: 'ja', target: fail }, { op: 'label', name: ok });
    return;
  }
  if (!p.wide) {
    out.push({ op: 'ld', offset: SECCOMP_DATA.argLow(p.arg) });
    for (const v of values) out.push({ op: 'jeq', k: pinValueWords(v).lo, jt: ok, jf: null });
    out.push({ op: 'ja', target: fail }, { op: 'label', name: ok });
    return;
  }
  // Wide: for each value, low word then high word.
  for (const v of values) {
    const w = pinValueWords(v);
    const nextValue = fresh();
    out.push(
      { op: 'ld', offset: SECCOMP_DATA.argLow(p.arg) },
      { op: 'jeq', k: w.lo, jt: null, jf: nextValue },
      { op: 'ld', offset: SECCOMP_DATA.argHigh(p.arg) },
      { op: 'jeq', k: w.hi, jt: ok, jf: nextValue },
      { op: 'label', name: nextValue },
    );
  }
  out.push({ op: 'ja', target: fail }, { op: 'label', name: ok });
}

/**
 * Compiles rules into a seccomp program for one architecture. Rules must have distinct syscall
 * numbers. The result is verified (verify()) before it is returned.
 */
export function compileFilter(rules: readonly CompiledRule[], opts: CompileOptions): Uint8Array {
  const def = actionValue(opts.defaultAction ?? { kind: 'errno', errno: EPERM });
  const badArch = opts.badArchAction ? actionValue(opts.badArchAction) : def;
  const seen = new Set<number>();
  for (const r of rules) {
    if (!Number.isInteger(r.nr) || r.nr < 0 || r.nr > 0xffff) throw new RangeError(`syscall number ${r.nr} out of range`);
    if (seen.has(r.nr)) throw new RangeError(`syscall ${r.nr} appears twice`);
    seen.add(r.nr);
  }
  const sorted = [...rules].sort((a, b) => a.nr - b.nr);
  let labels = 0;
  const fresh = (): Label => `L${labels++}`;
  const out: Item[] = [];

  out.push(
    { op: 'ld', offset: SECCOMP_DATA.arch },
    { op: 'jeq', k: AUDIT_ARCH[opts.arch], jt: null, jf: 'bad_arch' },
    { op: 'ld', offset: SECCOMP_DATA.nr },
  );
  if (opts.arch === 'x86_64') out.push({ op: 'jset', k: X32_SYSCALL_BIT, jt: 'bad_arch', jf: null });

  // Binary search over the sorted numbers; A holds nr throughout the tree.
  const handler = (r: CompiledRule): Label => (r.errno !== undefined ? `errno_${r.nr}` : r.when ? `pins_${r.nr}` : 'allow');
  const LEAF = 4;
  const tree = (lo: number, hi: number): void => {
    if (hi - lo <= LEAF) {
      for (let i = lo; i < hi; i++) out.push({ op: 'jeq', k: sorted[i]!.nr, jt: handler(sorted[i]!), jf: null });
      out.push({ op: 'ja', target: 'deny' });
      return;
    }
    const mid = (lo + hi) >>> 1;
    const right = fresh();
    // nr > sorted[mid-1] → right half [mid, hi); else left half [lo, mid).
    out.push({ op: 'jgt', k: sorted[mid - 1]!.nr, jt: right, jf: null });
    tree(lo, mid);
    out.push({ op: 'label', name: right });
    tree(mid, hi);
  };
  tree(0, sorted.length);

  // Handlers with pins.
  for (const r of sorted) {
    if (r.errno !== undefined) {
      out.push({ op: 'label', name: `errno_${r.nr}` }, { op: 'ret', k: actionValue({ kind: 'errno', errno: r.errno }) });
      continue;
    }
    if (!r.when) continue;
    if (r.when.length === 0) throw new RangeError(`syscall ${r.nr}: 'when' needs at least one alternative`);
    out.push({ op: 'label', name: `pins_${r.nr}` });
    for (const alt of r.when) {
      const next = fresh();
      for (const p of alt) emitPin(out, p, next, fresh);
      out.push({ op: 'ja', target: 'allow' }, { op: 'label', name: next });
    }
    out.push({ op: 'ja', target: 'deny' });
  }

  out.push(
    { op: 'label', name: 'allow' }, { op: 'ret', k: SECCOMP_RET.ALLOW },
    { op: 'label', name: 'deny' }, { op: 'ret', k: def },
    { op: 'label', name: 'bad_arch' }, { op: 'ret', k: badArch },
  );
  const prog = assemble(out);
  verify(prog);
  return prog;
}
