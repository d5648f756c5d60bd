/**
 * Network namespaces and taps for tests (any suite). Everything a test creates here is registered and
 * torn down by destroyAllNetns() (call it in afterAll), and as a last resort at process exit, even
 * when a test fails half-way.
 *
 *   const ns = createNetns();                         // ip netns add lgnet-<random>; lo up; no IPv6 noise
 *   const tap = openTapIn(ns, { vnetHdr: true });     // tap opened in ns via setns, up, 10.x.y.1/24
 *   const pkt = openPacketIn(ns, tap.name);           // AF_PACKET socket on that tap
 *   ns.exec('ip', 'link');                            // ip netns exec <ns> ...
 *   afterAll(() => destroyAllNetns());
 *
 * Traffic stays inside the namespaces created here; addresses exist only inside them. IPv6 is off in
 * them so that the kernel sends no router solicitations or MLD reports that tests would have to filter.
 * Needs root.
 */
import { spawn as spawnChild, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';

import { close, netnsEnter, netnsLeave, packetOpen, tapOpen, type TapOptions } from '../native/index.ts';

export interface Netns {
  readonly name: string;
  /** /run/netns/<name>, for netnsEnter. */
  readonly path: string;
  /** Runs argv inside the namespace (ip netns exec), returns stdout; throws with stderr on failure. */
  exec(...argv: string[]): string;
  /** Starts argv inside the namespace; killed by pid in destroy() if still running. */
  spawn(argv: string[], opts?: SpawnOptions): ChildProcess;
  /** Registers an fd to close in destroy() (before the namespace goes). */
  track(fd: number): number;
  /** Forgets a tracked fd (the caller closed it). */
  untrack(fd: number): void;
  /** Kills children, closes tracked fds, deletes the namespace. Idempotent; never throws. */
  destroy(): void;
  readonly destroyed: boolean;
}

export interface TapInNs {
  fd: number;
  name: string;
  /** The tap's address inside the namespace, e.g. 10.23.7.1/24 (undefined with address: false). */
  cidr: string | undefined;
  /** Closes the fd (the non-persistent tap disappears with it). Idempotent. */
  close(): void;
}

const live = new Set<Netns>();

function run(argv: string[], timeoutMs = 10_000): string {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: timeoutMs });
  if (r.error || r.status !== 0) {
    throw new Error(`${argv.join(' ')} failed (exit ${r.status}${r.error ? `, ${r.error.message}` : ''}): ${r.stderr}`);
  }
  return r.stdout;
}

function runQuiet(argv: string[]): void {
  spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 10_000 });
}

let exitHookSet = false;

/** Creates a fresh namespace lgnet-<random>, with lo up and IPv6 disabled. */
export function createNetns(prefix = 'lgnet'): Netns {
  const name = `${prefix}-${randomBytes(4).toString('hex')}`;
  const path = `/run/netns/${name}`;
  const children = new Set<ChildProcess>();
  const fds = new Set<number>();
  let destroyed = false;

  // Last resort for a process that ends without destroying what it made; registered on first use, so
  // importing the harness has no side effect.
  if (!exitHookSet) {
    exitHookSet = true;
    process.once('exit', destroyAllNetns);
  }
  run(['ip', 'netns', 'add', name]);
  const ns: Netns = {
    name,
    path,
    exec: (...argv) => run(['ip', 'netns', 'exec', name, ...argv], 30_000),
    spawn(argv, opts = {}) {
      const c = spawnChild('ip', ['netns', 'exec', name, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
      children.add(c);
      c.on('exit', () => children.delete(c));
      c.on('error', () => children.delete(c));
      return c;
    },
    track(fd) {
      fds.add(fd);
      return fd;
    },
    untrack(fd) {
      fds.delete(fd);
    },
    destroy() {
      if (destroyed) return;
      destroyed = true;
      live.delete(ns);
      for (const c of children) {
        if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
          try {
            process.kill(c.pid, 'SIGKILL');
          } catch {
            /* already gone */
          }
        }
      }
      children.clear();
      for (const fd of fds) {
        try {
          close(fd);
        } catch {
          /* closed elsewhere */
        }
      }
      fds.clear();
      runQuiet(['ip', 'netns', 'del', name]);
    },
    get destroyed() {
      return destroyed;
    },
  };
  live.add(ns);
  try {
    run(['ip', '-n', name, 'link', 'set', 'lo', 'up']);
    run(['ip', 'netns', 'exec', name, 'sysctl', '-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
  } catch (e) {
    ns.destroy();
    throw e;
  }
  return ns;
}

export interface OpenTapOptions extends Omit<TapOptions, 'name'> {
  /** Tap name; default: lgtap<random>. */
  name?: string;
  /** Address inside the namespace; default a random 10.x.y.1/24; false for none. */
  address?: string | false;
  /** Bring the link up (default true). */
  up?: boolean;
  mtu?: number;
}

/**
 * Opens a tap inside ns: the calling thread enters ns (netnsEnter), opens /dev/net/tun, and leaves
 * again; then the tap is configured with `ip -n`. The fd is tracked by ns.
 */
export function openTapIn(ns: Netns, opts: OpenTapOptions): TapInNs {
  const wanted = opts.name ?? `lgtap${randomBytes(3).toString('hex')}`;
  const prev = netnsEnter(ns.path);
  let tap: { fd: number; name: string };
  try {
    tap = tapOpen({ ...opts, name: wanted });
  } finally {
    netnsLeave(prev);
  }
  ns.track(tap.fd);
  const cidr = opts.address === false ? undefined : (opts.address ?? `10.${1 + (randomBytes(1)[0]! % 250)}.${randomBytes(1)[0]!}.1/24`);
  try {
    if (opts.mtu !== undefined) run(['ip', '-n', ns.name, 'link', 'set', tap.name, 'mtu', String(opts.mtu)]);
    if (cidr !== undefined) run(['ip', '-n', ns.name, 'addr', 'add', cidr, 'dev', tap.name]);
    if (opts.up !== false) run(['ip', '-n', ns.name, 'link', 'set', tap.name, 'up']);
  } catch (e) {
    ns.untrack(tap.fd);
    close(tap.fd);
    throw e;
  }
  let closed = false;
  return {
    fd: tap.fd,
    name: tap.name,
    cidr,
    close() {
      if (closed) return;
      closed = true;
      ns.untrack(tap.fd);
      close(tap.fd);
    },
  };
}

/** AF_PACKET socket bound to ifname inside ns (nonblocking); tracked by ns. */
export function openPacketIn(ns: Netns, ifname: string): number {
  const prev = netnsEnter(ns.path);
  try {
    return ns.track(packetOpen(ifname));
  } finally {
    netnsLeave(prev);
  }
}

/** Destroys every namespace created in this process that is still alive. */
export function destroyAllNetns(): void {
  for (const ns of [...live]) ns.destroy();
}

/**
 * Whether this process can create namespaces and taps (root, /dev/net/tun, ip). When it cannot, the
 * reason is printed once, so that a suite skipped for it says why.
 */
export function netnsPrerequisites(): { ok: boolean; why: string } {
  const r = checkPrerequisites();
  if (!r.ok && !warned) {
    warned = true;
    console.warn(`lgnet tests: skipping suites that need network namespaces and taps: ${r.why}`);
  }
  return r;
}

let warned = false;

function checkPrerequisites(): { ok: boolean; why: string } {
  if (process.getuid?.() !== 0) return { ok: false, why: 'not root' };
  if (!existsSync('/dev/net/tun')) return { ok: false, why: '/dev/net/tun missing' };
  const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return { ok: false, why: `ip netns unusable: ${r.error?.message ?? r.stderr}` };
  return { ok: true, why: '' };
}

