/**
 * The seccomp policy of `lgnet serve`, as data: one allowlist per thread role, every syscall with the
 * one line that says who needs it, and the arguments pinned where that matters. Anything not listed
 * fails with EPERM. docs/SECURITY.md explains the threat model; scripts/seccomp-trace.sh regenerates
 * the observed set this list was checked against (strace -f of a NetDevice serving a tap under load).
 *
 * Roles (Firecracker's vmm/api/vcpu split, lguest's launcher/threads):
 *   main    every thread of the process. Installed by enterJail() with TSYNC, so it also covers
 *           V8's platform threads, libuv's threadpool and the queue workers. The main thread serves
 *           the vhost-user channel (accept4, recvmsg with SCM_RIGHTS, mmap of memory fds, inflight
 *           memfd), the tap's offload ioctls (SET_FEATURES arrives after the jail), the control queue
 *           and logs.
 *   worker  the data path, stacked on top of `main` by each queue worker thread itself
 *           (enterWorkerJail()): readv/writev on the tap, poll, eventfd reads and writes, and what a
 *           V8 isolate needs to run and collect garbage. No sockets, no ioctl, no thread creation.
 *
 * io_uring: seccomp cannot see the operations inside a ring, so io_uring_setup and io_uring_register
 * stay denied, and io_uring_enter is allowed (both roles, since stacked filters both apply) only with
 * arg 0 one of lgnet's own rings (PolicyOptions.uringFds), made before the jail and restricted to
 * READV/WRITEV on their registered tap (native/uring.cc). Without rings the rule is left out.
 *
 * Stacked filters both apply; the stricter answer wins. So a worker can never do more than `main`.
 *
 * Deliberately absent (EPERM): execve/execveat, fork/vfork and clone without CLONE_THREAD (clone3 gets
 * ENOSYS, so glibc falls back to clone, whose flags can be checked), open/openat/creat of anything
 * (serving opens no file: every module, the tap, the socket are opened before the jail), socket
 * creation, connect, bind, listen, ptrace, process_vm_*, mount/umount, chroot, pivot_root, setns,
 * unshare, bpf, keyctl/add_key, perf_event_open, io_uring_setup/register (and io_uring_enter on any
 * ring not lgnet's), userfaultfd, kill (tgkill to ourselves only), set*id, setrlimit, reboot, module
 * loading, kexec, swapon, *xattr, link/unlink/rename, mknod.
 */
import type { ArgPin } from './seccomp-bpf.ts';

/** A thread role with its own allowlist. */
export type Role = 'main' | 'worker';
export const ROLES: readonly Role[] = ['main', 'worker'];

/** One allowlist entry. */
export interface SyscallRule {
  /** The kernel's name (as in asm/unistd_64.h). Names an architecture lacks are skipped there. */
  name: string;
  /** Who needs it, in one line. */
  reason: string;
  /** Allowed only when every pin of one alternative holds. Absent: allowed with any arguments. */
  when?: ReadonlyArray<ReadonlyArray<ArgPin>>;
  /** Answer this errno instead of allowing (clone3 → ENOSYS). */
  errno?: number;
  /** Only with this policy option on. */
  option?: keyof PolicyOptions;
}

/** What the policy depends on at jail time. */
export interface PolicyOptions {
  /**
   * vhost-user client mode (lgnet connects to the VMM and reconnects after it restarts): allow
   * socket(AF_UNIX, SOCK_STREAM) and connect. Any reachable unix socket can then be connected to, so
   * combine it with --chroot to a directory that holds only the VMM's socket.
   */
  unixConnect?: boolean;
  /**
   * Running as a --user without CAP_NET_ADMIN: allow TUNSETIFF, so that lgnet attaches its tap fds
   * again after the tap was deleted and made again (TapBackend.reattach). The kernel then lets it
   * attach only to taps that user owns, never create one. Not for root: it could attach to any tap.
   */
  tapReattach?: boolean;
  /**
   * The fds of lgnet's restricted io_uring rings (TapBackend.ringFds, native.uringFds()): io_uring_enter
   * is allowed with one of them as its fd, nothing else. Empty or absent: io_uring_enter is denied.
   */
  uringFds?: readonly number[];
  /**
   * Postcopy migration (`--postcopy`): allow the ioctls that make a userfaultfd from the
   * /dev/userfaultfd fd opened before the jail and register guest memory with it. The userfaultfd
   * system call itself stays denied.
   */
  postcopy?: boolean;
}

/** Placeholder in a pin: replaced by the process id when the policy is compiled. */
export const OWN_PID = -0x5e1f;

// ---- named constants (x86_64 and aarch64 agree on all of these) ---------------------------------------

const ENOSYS = 38;

/** clone flags (linux/sched.h). */
export const CLONE = {
  VM: 0x100, FS: 0x200, FILES: 0x400, SIGHAND: 0x800, PIDFD: 0x1000, PTRACE: 0x2000, VFORK: 0x4000,
  PARENT: 0x8000, THREAD: 0x10000, NEWNS: 0x20000, SYSVSEM: 0x40000, SETTLS: 0x80000,
  PARENT_SETTID: 0x100000, CHILD_CLEARTID: 0x200000, UNTRACED: 0x800000, CHILD_SETTID: 0x1000000,
  NEWCGROUP: 0x2000000, NEWUTS: 0x4000000, NEWIPC: 0x8000000, NEWUSER: 0x10000000, NEWPID: 0x20000000,
  NEWNET: 0x40000000, IO: 0x80000000,
} as const;

/** What a thread is: glibc's pthread_create passes all of these (plus SETTLS, *TID, SYSVSEM). */
const THREAD_FLAGS = { CLONE_VM: CLONE.VM, CLONE_FS: CLONE.FS, CLONE_FILES: CLONE.FILES, CLONE_SIGHAND: CLONE.SIGHAND, CLONE_THREAD: CLONE.THREAD };
/** Never for a thread of ours: new namespaces, tracing, vfork semantics, reparenting, pidfds. */
const CLONE_FORBIDDEN = {
  CLONE_NEWNS: CLONE.NEWNS, CLONE_NEWCGROUP: CLONE.NEWCGROUP, CLONE_NEWUTS: CLONE.NEWUTS, CLONE_NEWIPC: CLONE.NEWIPC,
  CLONE_NEWUSER: CLONE.NEWUSER, CLONE_NEWPID: CLONE.NEWPID, CLONE_NEWNET: CLONE.NEWNET, CLONE_PTRACE: CLONE.PTRACE,
  CLONE_UNTRACED: CLONE.UNTRACED, CLONE_VFORK: CLONE.VFORK, CLONE_PARENT: CLONE.PARENT, CLONE_PIDFD: CLONE.PIDFD,
};

const PROT = { READ: 0x1, WRITE: 0x2, EXEC: 0x4 } as const;
const MAP = { SHARED: 0x01, PRIVATE: 0x02, SHARED_VALIDATE: 0x03, TYPE: 0x0f, ANONYMOUS: 0x20 } as const;

/** ioctl request numbers (asm-generic/ioctls.h, linux/if_tun.h). */
export const IOCTL = {
  FIONBIO: 0x5421, // libuv: uv__nonblock on every fd it watches (uv_poll_init, accepted sockets)
  FIOCLEX: 0x5451, // libuv: uv__cloexec
  TCGETS: 0x5401, // libuv: isatty / uv_guess_handle for stdio
  TIOCGWINSZ: 0x5413, // libuv: uv_tty_get_winsize when stdout is a terminal
  TUNSETOFFLOAD: 0x400454d0, // TapBackend.configure: receive offloads follow what the guest accepted
  TUNSETVNETHDRSZ: 0x400454d8, // TapBackend.configure: 10 or 12 header bytes, decided at SET_FEATURES
  TUNGETFEATURES: 0x800454cf, // read-only: what this tun driver supports
  TUNSETQUEUE: 0x400454d9, // TapBackend.setPairActive: a queue the guest does not use is detached (only the fd's own queue, of its own tap)
  TUNGETIFF: 0x800454d2, // read-only: TapBackend's watch for a deleted macvtap (ENOLINK)
} as const;

/** userfaultfd ioctls (linux/userfaultfd.h) for postcopy: make one from the device, set it up, (un)register memory. */
export const UFFD_IOCTL = {
  USERFAULTFD_IOC_NEW: 0xaa00, // on the /dev/userfaultfd fd: a new userfaultfd
  UFFDIO_API: 0xc018aa3f, // the handshake on a new userfaultfd
  UFFDIO_REGISTER: 0xc020aa00, // guest memory mapped for a postcopy memory table
  UFFDIO_UNREGISTER: 0x8010aa01, // POSTCOPY_END, or a connection that ends mid-postcopy
} as const;

const FCNTL = { F_DUPFD_CLOEXEC: 1030, F_GETFD: 1, F_SETFD: 2, F_GETFL: 3, F_SETFL: 4, F_ADD_SEALS: 1033 } as const;

/** futex commands after masking FUTEX_PRIVATE_FLAG (128) and FUTEX_CLOCK_REALTIME (256). No PI ops. */
const FUTEX_CMD_MASK = ~(128 | 256) >>> 0;
const FUTEX = { FUTEX_WAIT: 0, FUTEX_WAKE: 1, FUTEX_REQUEUE: 3, FUTEX_CMP_REQUEUE: 4, FUTEX_WAKE_OP: 5, FUTEX_WAIT_BITSET: 9, FUTEX_WAKE_BITSET: 10 } as const;

/** madvise advice that only concerns our own memory (no HWPOISON/SOFT_OFFLINE, which need CAP_SYS_ADMIN). */
const MADV = {
  MADV_NORMAL: 0, MADV_RANDOM: 1, MADV_SEQUENTIAL: 2, MADV_WILLNEED: 3, MADV_DONTNEED: 4, MADV_FREE: 8,
  MADV_DONTFORK: 10, MADV_DOFORK: 11, MADV_HUGEPAGE: 14, MADV_NOHUGEPAGE: 15, MADV_DONTDUMP: 16,
  MADV_DODUMP: 17, MADV_WIPEONFORK: 18, MADV_KEEPONFORK: 19, MADV_COLD: 20, MADV_PAGEOUT: 21,
} as const;

const PR = { PR_SET_NAME: 15, PR_GET_NAME: 16, PR_SET_VMA: 0x53564d41 } as const;
const AT_EMPTY_PATH = 0x1000;
const AF_UNIX = 1;
const SOCK_TYPE_MASK = 0xf;
const SOCK_STREAM = 1;

// ---- the lists -------------------------------------------------------------------------------------------

/** What any thread running a V8 isolate or a libuv loop does: memory, time, locks, signals, exit. */
const RUNTIME: readonly SyscallRule[] = [
  { name: 'read', reason: 'eventfd counters (kicks, control, libuv async wakeups), the tap is read with readv' },
  { name: 'write', reason: 'eventfd signals (call fds, worker control), libuv async wakeups, logs to stdout/stderr, the RARP announce to the tap' },
  { name: 'close', reason: 'fds whose life ends while serving: replaced memory and kick/call fds, closed connections' },
  {
    name: 'mmap',
    reason: 'V8 heap and GC, malloc arenas, thread stacks; MAP_SHARED guest memory from the VMM; zero pages over guest memory that shrank (the SIGBUS guard, any thread). Executable only if anonymous and private',
    when: [
      [{ arg: 2, noneOf: { PROT_EXEC: PROT.EXEC } }],
      [{ arg: 3, mask: MAP.TYPE | MAP.ANONYMOUS, maskName: 'MAP_TYPE|MAP_ANONYMOUS', oneOf: { 'MAP_PRIVATE|MAP_ANONYMOUS': MAP.PRIVATE | MAP.ANONYMOUS } }],
    ],
  },
  { name: 'munmap', reason: 'V8 GC, freed malloc arenas and thread stacks, released guest memory' },
  { name: 'mprotect', reason: "V8's JIT flips code pages between RW and RX(W), and guard pages; cannot be told from guest memory by arguments" },
  { name: 'madvise', reason: 'V8 GC returns pages (DONTNEED/FREE), glibc thread stacks (DONTFORK)', when: [[{ arg: 2, oneOf: MADV }]] },
  { name: 'mremap', reason: 'glibc realloc of large blocks' },
  { name: 'brk', reason: 'glibc malloc main arena' },
  { name: 'futex', reason: 'mutexes and condition variables: V8 platform, libuv, MessagePort, Atomics.wait', when: [[{ arg: 1, mask: FUTEX_CMD_MASK, maskName: 'FUTEX_CMD_MASK', oneOf: FUTEX }]] },
  { name: 'membarrier', reason: "V8's code-space flushing on some CPUs" },
  { name: 'clock_gettime', reason: 'timers (normally vDSO; the syscall when the vDSO cannot answer)' },
  { name: 'clock_getres', reason: 'libuv/V8 clock setup' },
  { name: 'gettimeofday', reason: 'vDSO fallback' },
  { name: 'nanosleep', reason: 'V8/libuv back-off' },
  { name: 'clock_nanosleep', reason: 'glibc nanosleep/usleep' },
  { name: 'sched_yield', reason: 'V8 spin locks and GC task back-off' },
  { name: 'getpid', reason: 'V8 and libuv (own pid for tgkill, logs)' },
  { name: 'gettid', reason: 'V8 thread ids, glibc' },
  { name: 'getrandom', reason: 'V8 hash seeds and Math.random for new isolates, crypto.getRandomValues (MAC generation)' },
  { name: 'rt_sigprocmask', reason: 'glibc and libuv block signals around thread creation and exit' },
  { name: 'rt_sigreturn', reason: 'return from a signal handler (the SIGBUS guard on any thread)' },
  { name: 'restart_syscall', reason: 'restart an interrupted sleep after a signal' },
  { name: 'sigaltstack', reason: 'V8/Node install an alternate signal stack per thread' },
  { name: 'tgkill', reason: 'abort() and V8 signal its own threads, the SIGBUS guard re-raises a SIGBUS that was not a guest-memory fault; only this process', when: [[{ arg: 0, oneOf: { 'this process': OWN_PID } }]] },
  { name: 'exit', reason: 'a thread ends (a worker that was stopped or terminated)' },
  { name: 'exit_group', reason: 'the process ends (on its own terms, never process.exit from the jail)' },
  { name: 'epoll_wait', reason: "a worker isolate's own libuv loop, run once at its start and end" },
  { name: 'epoll_pwait', reason: 'the libuv event loop' },
  { name: 'epoll_pwait2', reason: 'newer libuv/glibc event loop wait' },
  { name: 'epoll_ctl', reason: 'libuv watches fds: the vhost-user socket, kick fds (FdPoller), stdin/stdout pipes' },
];

/** The data path: what a queue worker does per burst. */
const DATA_PATH: readonly SyscallRule[] = [
  { name: 'readv', reason: 'RX: frames from the tap straight into guest buffers (readvBatch)' },
  { name: 'writev', reason: 'TX: frames from guest buffers to the tap (writevBatch); libuv stream writes' },
  { name: 'poll', reason: 'workers sleep on kick, control and tap fds (native poll/waitKick)' },
  { name: 'ppoll', reason: 'native waitKick (sub-millisecond sleeps of a held interrupt); glibc poll() on aarch64' },
];

/** Control plane: the vhost-user channel and the rest of what the main thread does after the jail. */
const CONTROL: readonly SyscallRule[] = [
  { name: 'accept4', reason: 'vhost-user server: the next frontend connection on the listening socket opened before the jail' },
  { name: 'recvmsg', reason: 'vhost-user messages with SCM_RIGHTS (memory fds, kick/call eventfds)' },
  { name: 'sendmsg', reason: 'vhost-user replies (and fds for the inflight memfd); the service manager\'s notifications (and the tap\'s fds for its fd store)' },
  { name: 'shutdown', reason: 'dropping a vhost-user connection that broke the protocol' },
  { name: 'getsockopt', reason: 'libuv: SO_ERROR and SO_TYPE on sockets it watches' },
  { name: 'getsockname', reason: 'libuv: uv_guess_handle on stdio and sockets' },
  { name: 'memfd_create', reason: 'vhost-user GET_INFLIGHT_FD: the inflight tracking region', when: [[{ arg: 1, noneOf: { MFD_HUGETLB: 0x4, MFD_EXEC: 0x10 } }]] },
  { name: 'ftruncate', reason: 'sizing the inflight memfd' },
  { name: 'eventfd2', reason: "a queue's worker control eventfd (startQueue), a worker isolate's libuv loop" },
  { name: 'epoll_create1', reason: "a worker isolate's libuv loop" },
  { name: 'pipe2', reason: "libuv's signal pipe for a new loop" },
  { name: 'fstat', reason: 'libuv/Node stdio setup and fd checks (fstat on an fd)' },
  { name: 'fstatfs', reason: 'native mmap: is a guest memory fd on hugetlbfs (the SIGBUS guard then replaces whole huge pages)' },
  { name: 'newfstatat', reason: 'glibc fstat() as fstatat(fd, "", AT_EMPTY_PATH)', when: [[{ arg: 3, allOf: { AT_EMPTY_PATH } }]] },
  { name: 'statx', reason: 'libuv fstat as statx(fd, "", AT_EMPTY_PATH)', when: [[{ arg: 2, allOf: { AT_EMPTY_PATH } }]] },
  { name: 'lseek', reason: 'libuv/Node stdio on files' },
  { name: 'fcntl', reason: 'nonblocking and close-on-exec flags on fds (native setNonblocking, libuv); F_SEAL_SHRINK on memfds it maps (native mmap)', when: [[{ arg: 1, oneOf: FCNTL }]] },
  { name: 'ioctl', reason: 'libuv FIONBIO/FIOCLEX, tty queries for stdio, and the tap ioctls set at SET_FEATURES (TUNSETIFF only with --user, below)', when: [[{ arg: 1, oneOf: IOCTL }]] },
  { name: 'ioctl', reason: 'with --postcopy: a userfaultfd made from /dev/userfaultfd (opened before the jail) at POSTCOPY_ADVISE, and guest memory registered with it', when: [[{ arg: 1, oneOf: UFFD_IOCTL }]], option: 'postcopy' },
  { name: 'ioctl', reason: 'with --user: TUNSETIFF on the tap fds, to attach them again after the tap was deleted and made again (only to taps that user owns)', when: [[{ arg: 1, oneOf: { TUNSETIFF: 0x400454ca } }]], option: 'tapReattach' },
  { name: 'clone', reason: 'new threads only (a Worker, libuv threadpool, V8 platform): CLONE_THREAD|VM|SIGHAND|FS|FILES required, namespaces and tracing forbidden', when: [[{ arg: 0, allOf: THREAD_FLAGS }, { arg: 0, noneOf: CLONE_FORBIDDEN }]] },
  { name: 'clone3', reason: 'its flags sit in memory where seccomp cannot look: ENOSYS makes glibc fall back to clone', errno: ENOSYS },
  { name: 'set_robust_list', reason: 'glibc: every new thread' },
  { name: 'rseq', reason: 'glibc: every new thread registers restartable sequences' },
  { name: 'sched_getaffinity', reason: 'libuv/V8: CPU count when a worker isolate starts' },
  { name: 'rt_sigaction', reason: 'Node/libuv signal handlers (SIGINT/SIGTERM for a clean stop, SIGPIPE ignored); the SIGBUS guard restores the default before a real crash' },
  { name: 'wait4', reason: "libuv reaps a child that ended (SIGCHLD), e.g. one an embedding process ended just before enterJail; denied, libuv aborts the process. A reaped child can only be our own (fork/clone of processes stays denied)" },
  { name: 'waitid', reason: 'the same, for libuv/glibc versions that reap with waitid' },
  { name: 'prctl', reason: 'thread names and V8 naming its memory; nothing else (no PR_SET_DUMPABLE, no PR_SET_SECCOMP)', when: [[{ arg: 0, oneOf: PR }]] },
  { name: 'seccomp', reason: 'a worker stacks its narrower filter: SECCOMP_SET_MODE_FILTER with flags 0 (no TSYNC, no listener)', when: [[{ arg: 0, oneOf: { SECCOMP_SET_MODE_FILTER: 1 } }, { arg: 1, oneOf: { none: 0 } }]] },
  { name: 'getuid', reason: 'Node: credential checks when a worker reads its environment' },
  { name: 'geteuid', reason: 'Node: credential checks' },
  { name: 'getgid', reason: 'Node: credential checks' },
  { name: 'getegid', reason: 'Node: credential checks' },
  { name: 'getresuid', reason: 'Node: credential checks' },
  { name: 'getresgid', reason: 'Node: credential checks' },
  { name: 'capget', reason: 'Node: credential checks (HasOnly/SafeGetenv) when a worker starts' },
  { name: 'getrlimit', reason: 'read-only rlimit queries' },
  { name: 'prlimit64', reason: 'glibc getrlimit: pid 0 and no new limit (read only)', when: [[{ arg: 0, oneOf: { 'this process': 0 }, wide: true }, { arg: 2, oneOf: { NULL: 0 }, wide: true }]] },
  { name: 'getrusage', reason: 'process.cpuUsage/resourceUsage for metrics' },
  { name: 'pread64', reason: '--metrics-listen: re-reads /proc/self/status (RSS, threads) and /proc/self/net/dev (the tap counters) at offset 0 through the fds opened before the jail (metrics-process.ts, metrics-tap.ts)' },
  { name: 'sysinfo', reason: 'os.freemem/os.totalmem for metrics' },
  { name: 'uname', reason: 'os.hostname/os.release for logs' },
  { name: 'getcwd', reason: 'process.cwd() (after --chroot it is "/")' },
  { name: 'socket', reason: 'vhost-user client mode reconnect: AF_UNIX stream sockets only', option: 'unixConnect', when: [[{ arg: 0, oneOf: { AF_UNIX } }, { arg: 1, mask: SOCK_TYPE_MASK, maskName: 'SOCK_TYPE_MASK', oneOf: { SOCK_STREAM } }]] },
  { name: 'connect', reason: 'vhost-user client mode reconnect to the VMM socket', option: 'unixConnect' },
];

/** The worker's own list: the data path and a V8 isolate, nothing of the control plane. */
const WORKER_EXTRA: readonly SyscallRule[] = [
  { name: 'fcntl', reason: "fd flag queries; Node CHECK-fails (aborts) if fcntl(F_GETFL) on stdio fails in its teardown", when: [[{ arg: 1, oneOf: FCNTL }]] },
  { name: 'rt_sigaction', reason: "Node's teardown resets signal handlers and CHECK-fails (aborts) if it cannot; the SIGBUS guard restores the default before a real crash" },
  { name: 'fstat', reason: 'glibc/V8 on an fd (rare)' },
  { name: 'newfstatat', reason: 'glibc fstat() as fstatat(fd, "", AT_EMPTY_PATH)', when: [[{ arg: 3, allOf: { AT_EMPTY_PATH } }]] },
];

/** The policy: one allowlist per role. */
export const POLICY: Readonly<Record<Role, readonly SyscallRule[]>> = {
  main: [...RUNTIME, ...DATA_PATH, ...CONTROL],
  worker: [...RUNTIME, ...DATA_PATH, ...WORKER_EXTRA],
};

/** Syscalls the jail exists to stop; tests and formatPolicy() check that no role lists them. */
export const MUST_DENY: readonly string[] = [
  'execve', 'execveat', 'fork', 'vfork', 'ptrace', 'process_vm_readv', 'process_vm_writev', 'open', 'openat', 'openat2',
  'creat', 'socketpair', 'bind', 'listen', 'mount', 'umount2', 'pivot_root', 'chroot', 'setns', 'unshare', 'bpf', 'keyctl',
  'add_key', 'request_key', 'perf_event_open', 'io_uring_setup', 'io_uring_register', 'userfaultfd', 'kill', 'setuid', 'setgid', 'setresuid',
  'setresgid', 'setgroups', 'setrlimit', 'init_module', 'finit_module', 'kexec_load', 'reboot', 'unlink', 'unlinkat',
  'rename', 'renameat2', 'mknod', 'mknodat', 'symlink', 'link', 'truncate', 'pkey_mprotect', 'name_to_handle_at',
  'open_by_handle_at', 'fanotify_init', 'inotify_init1', 'pidfd_open', 'pidfd_getfd', 'kcmp', 'mbind', 'migrate_pages',
  'move_pages', 'setxattr', 'personality', 'acct', 'quotactl', 'swapon', 'syslog', 'vhangup', 'lookup_dcookie',
];

/** io_uring_enter on exactly these ring fds (the pin compares the fd, an unsigned int). */
function uringEnterRule(fds: readonly number[]): SyscallRule {
  for (const fd of fds) {
    if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fff_ffff) throw new RangeError(`uringFds: ${fd} is not an fd`);
  }
  return {
    name: 'io_uring_enter',
    reason: "tap I/O in bursts (native/uring.cc) on lgnet's own rings only, restricted to READV/WRITEV on their tap before the jail",
    option: 'uringFds',
    when: [[{ arg: 0, oneOf: Object.fromEntries(fds.map((fd) => [`ring fd ${fd}`, fd])) }]],
  };
}

/** The rules of a role with options applied (rules for options that are off are dropped). */
export function rulesFor(role: Role, opts: PolicyOptions = {}): SyscallRule[] {
  const rules = POLICY[role];
  if (!rules) throw new RangeError(`unknown role '${String(role)}'; roles are ${ROLES.join(', ')}`);
  // Rules of one syscall (an option that widens a base rule) merge: any of their alternatives allows.
  const merged = new Map<string, SyscallRule>();
  for (const r of rules.filter((x) => x.option === undefined || opts[x.option] === true)) {
    const prev = merged.get(r.name);
    if (!prev) {
      merged.set(r.name, r);
      continue;
    }
    if (prev.errno !== undefined || r.errno !== undefined) throw new RangeError(`syscall ${r.name}: an errno rule cannot merge with another`);
    const when = prev.when && r.when ? [...prev.when, ...r.when] : undefined;
    merged.set(r.name, { name: r.name, reason: `${prev.reason}; ${r.reason}`, ...(when ? { when } : {}) });
  }
  const out = [...merged.values()];
  const rings = [...new Set(opts.uringFds ?? [])];
  if (rings.length > 0) {
    out.push(uringEnterRule(rings));
    // A ring fd never closes while jailed: its number could otherwise be reused by an fd that arrives
    // later (SCM_RIGHTS takes the lowest free number), such as an unrestricted ring a front-end sent,
    // which io_uring_enter would then accept. dup2, dup3 and close_range are denied anyway.
    const i = out.findIndex((r) => r.name === 'close');
    const close = out[i];
    // The pin below replaces the rule's conditions: a close rule with its own would need merging.
    if (!close || close.when !== undefined || close.errno !== undefined) throw new RangeError(`role ${role}: the close rule must be unconditional for the ring-fd pin`);
    out[i] = {
      ...close,
      reason: `${close.reason}; never one of lgnet's io_uring ring fds, whose numbers io_uring_enter trusts`,
      when: [[{ arg: 0, notOneOf: Object.fromEntries(rings.map((fd) => [`ring fd ${fd}`, fd])) }]],
    };
  }
  return out;
}
