/**
 * Test network namespaces with a tap inside, for guest tests and benchmarks.
 *
 *   const net = createTapNamespace();        // ns lgnet-<random>, tap lgtap0 with 10.0.2.1/24, up
 *   try { ... bootGuest({ netns: net.ns, netdev: { type: 'tap', ifname: net.tap }, ... }) ... }
 *   finally { await net.destroy(); }         // kills what it started (by pid), deletes tap and ns
 *
 * Or several taps in one Linux bridge, as if they were ports of one L2 segment (live migration: the
 * guest moves from one tap to the other and the bridge learns where its MAC went):
 *
 *   const net = createBridgeNamespace({ taps: ['lgma', 'lgmb'] });   // bridge lgbr0 with 10.0.2.1/24
 *
 * Or a macvtap on one end of a veth pair, as a guest attached straight to a host NIC (libvirt's "direct"
 * interface), with the host on the other end:
 *
 *   const net = createMacvtapNamespace({});   // lgmvt0 on lgva, 10.0.2.1/24 on lgvb
 *
 * Traffic stays inside the namespace: the host side of the link is `hostCidr` there, and nothing
 * routes out of it. Only root can do this (ip netns, ip tuntap, ip link add type bridge).
 */
import { spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
import { randomBytes } from 'node:crypto';

export interface TapNamespaceOptions {
  /** Namespace name prefix; a random suffix is added. Default 'lgnet'. */
  prefix?: string;
  /** Tap name inside the namespace. Default 'lgtap0'. */
  tap?: string;
  /** Address of the host side, on the tap. Default '10.0.2.1/24'. */
  hostCidr?: string;
  /** Create the tap with multi_queue (needed when QEMU opens it with queues > 1). */
  multiQueue?: boolean;
  /** MTU of the tap. */
  mtu?: number;
}

/** What every test namespace offers. */
export interface Namespace {
  ns: string;
  hostIp: string;
  /** Runs a command inside the namespace and waits (throws on failure unless check is false). */
  exec(argv: string[], opts?: { timeoutMs?: number; check?: boolean }): SpawnSyncReturns<string>;
  /** Starts a command inside the namespace; it is killed by pid in destroy() if still running. */
  spawn(argv: string[]): ChildProcess;
  /** `iperf3 -s` bound to the host address; resolves once it listens. Killed in destroy(). */
  startIperf3Server(opts?: { port?: number; oneOff?: boolean; timeoutMs?: number }): Promise<ChildProcess>;
  /** Kills the processes it started, deletes its links and the namespace. Idempotent, never throws. */
  destroy(): Promise<void>;
}

export interface TapNamespace extends Namespace {
  tap: string;
}

export interface BridgeNamespaceOptions {
  /** Namespace name prefix; a random suffix is added. Default 'lgnet'. */
  prefix?: string;
  /** Taps to make and enslave to the bridge (all with vnet_hdr). */
  taps: string[];
  /** Bridge name. Default 'lgbr0'. */
  bridge?: string;
  /** Address of the host side, on the bridge. Default '10.0.2.1/24'. */
  hostCidr?: string;
}

export interface BridgeNamespace extends Namespace {
  bridge: string;
  taps: string[];
  /** The bridge's forwarding entries for this MAC: the port(s) it learned it on (bridge fdb). */
  fdbPorts(mac: string): string[];
}

function run(argv: string[], timeoutMs = 10_000, check = true): SpawnSyncReturns<string> {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: timeoutMs });
  if (check && (r.status !== 0 || r.error)) {
    throw new Error(`${argv.join(' ')} failed (exit ${r.status}${r.error ? `, ${r.error.message}` : ''}): ${r.stderr}`);
  }
  return r;
}

export function createTapNamespace(opts: TapNamespaceOptions = {}): TapNamespace {
  const ns = `${opts.prefix ?? 'lgnet'}-${randomBytes(4).toString('hex')}`;
  const tap = opts.tap ?? 'lgtap0';
  const hostCidr = opts.hostCidr ?? '10.0.2.1/24';

  run(['ip', 'netns', 'add', ns]);
  try {
    run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    run(['ip', '-n', ns, 'tuntap', 'add', 'dev', tap, 'mode', 'tap', 'vnet_hdr', ...(opts.multiQueue ? ['multi_queue'] : [])]);
    if (opts.mtu) run(['ip', '-n', ns, 'link', 'set', tap, 'mtu', String(opts.mtu)]);
    run(['ip', '-n', ns, 'addr', 'add', hostCidr, 'dev', tap]);
    run(['ip', '-n', ns, 'link', 'set', tap, 'up']);
  } catch (e) {
    run(['ip', 'netns', 'del', ns], 10_000, false);
    throw e;
  }
  return { ...namespaceHandle(ns, hostCidr.split('/')[0]!, [tap]), tap };
}

export interface MacvtapNamespaceOptions {
  /** Namespace name prefix; a random suffix is added. Default 'lgnet'. */
  prefix?: string;
  /** The macvtap's name. Default 'lgmvt0'. */
  macvtap?: string;
  /** The macvtap's address (the lower device delivers it only the frames sent there). Default: the
   *  kernel's random one, for lgnet to replace with the guest's (`lgnet serve --mac`). */
  mac?: string;
  /** Address of the host side, on the veth end that is not the macvtap's lower device. Default '10.0.2.1/24'. */
  hostCidr?: string;
  /**
   * The macvtap's interface index, which names its device node (/dev/tap<index>). Indexes repeat across
   * namespaces, and two macvtaps with one index share one node name. Default: macvtapIndex().
   */
  index?: number;
}

/**
 * A random interface index in [20000, 60000) for a macvtap: its device node is /dev/tap<index>, and
 * indexes repeat across namespaces, so two macvtaps made at once with the kernel's next index (often
 * the same small number in two fresh namespaces) would meet at one node name.
 */
export function macvtapIndex(): number {
  return 20_000 + Math.floor(Math.random() * 40_000);
}

/** A namespace with veth pair lgva/lgvb, macvtap `macvtap` (bridge mode) on lgva, and the host on lgvb. */
export function createMacvtapNamespace(opts: MacvtapNamespaceOptions): TapNamespace {
  const ns = `${opts.prefix ?? 'lgnet'}-${randomBytes(4).toString('hex')}`;
  const macvtap = opts.macvtap ?? 'lgmvt0';
  const hostCidr = opts.hostCidr ?? '10.0.2.1/24';
  run(['ip', 'netns', 'add', ns]);
  try {
    run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    run(['ip', '-n', ns, 'link', 'add', 'lgva', 'type', 'veth', 'peer', 'name', 'lgvb']);
    const index = opts.index ?? macvtapIndex();
    run(['ip', '-n', ns, 'link', 'add', 'link', 'lgva', 'name', macvtap, 'index', String(index), ...(opts.mac ? ['address', opts.mac] : []), 'type', 'macvtap', 'mode', 'bridge']);
    run(['ip', '-n', ns, 'addr', 'add', hostCidr, 'dev', 'lgvb']);
    for (const l of ['lgva', 'lgvb', macvtap]) run(['ip', '-n', ns, 'link', 'set', l, 'up']);
  } catch (e) {
    run(['ip', 'netns', 'del', ns], 10_000, false);
    throw e;
  }
  return { ...namespaceHandle(ns, hostCidr.split('/')[0]!, [macvtap, 'lgva']), tap: macvtap };
}

export function createBridgeNamespace(opts: BridgeNamespaceOptions): BridgeNamespace {
  const ns = `${opts.prefix ?? 'lgnet'}-${randomBytes(4).toString('hex')}`;
  const bridge = opts.bridge ?? 'lgbr0';
  const hostCidr = opts.hostCidr ?? '10.0.2.1/24';
  if (!opts.taps.length) throw new Error('createBridgeNamespace: no taps');

  run(['ip', 'netns', 'add', ns]);
  try {
    run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    // No STP: a port forwards as soon as it is up (no listening/learning delay when a tap appears).
    run(['ip', '-n', ns, 'link', 'add', bridge, 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0']);
    for (const tap of opts.taps) {
      run(['ip', '-n', ns, 'tuntap', 'add', 'dev', tap, 'mode', 'tap', 'vnet_hdr']);
      run(['ip', '-n', ns, 'link', 'set', tap, 'master', bridge]);
      run(['ip', '-n', ns, 'link', 'set', tap, 'up']);
    }
    run(['ip', '-n', ns, 'addr', 'add', hostCidr, 'dev', bridge]);
    run(['ip', '-n', ns, 'link', 'set', bridge, 'up']);
  } catch (e) {
    run(['ip', 'netns', 'del', ns], 10_000, false);
    throw e;
  }
  const base = namespaceHandle(ns, hostCidr.split('/')[0]!, [...opts.taps, bridge]);
  return {
    ...base,
    bridge,
    taps: [...opts.taps],
    fdbPorts(mac) {
      const r = base.exec(['bridge', 'fdb', 'show', 'br', bridge], { check: false });
      const want = mac.toLowerCase();
      return (r.stdout ?? '')
        .split('\n')
        .filter((l) => l.toLowerCase().startsWith(`${want} `))
        .map((l) => /\bdev (\S+)/.exec(l)?.[1] ?? '?');
    },
  };
}

/** exec, spawn, iperf3 and destroy for namespace ns; destroy deletes `links`, then the namespace. */
function namespaceHandle(ns: string, hostIp: string, links: string[]): Namespace {
  const children = new Set<ChildProcess>();
  let destroyed = false;
  const self: Namespace = {
    ns,
    hostIp,
    exec(argv, o = {}) {
      return run(['ip', 'netns', 'exec', ns, ...argv], o.timeoutMs ?? 30_000, o.check ?? true);
    },
    spawn(argv) {
      const c = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
      children.add(c);
      c.on('close', () => children.delete(c));
      c.on('error', () => children.delete(c));
      return c;
    },
    startIperf3Server(o = {}) {
      const port = o.port ?? 5201;
      const c = self.spawn(['iperf3', '-s', '-B', hostIp, '-p', String(port), '--forceflush', ...(o.oneOff ? ['-1'] : [])]);
      let out = '';
      return new Promise<ChildProcess>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`iperf3 server did not start: ${out}`)), o.timeoutMs ?? 10_000);
        const onData = (d: Buffer) => {
          out += d.toString();
          if (/Server listening/.test(out)) {
            clearTimeout(t);
            resolve(c);
          }
        };
        c.stdout!.on('data', onData);
        c.stderr!.on('data', onData);
        c.on('close', (code) => {
          clearTimeout(t);
          reject(new Error(`iperf3 server exited (${code}): ${out}`));
        });
      });
    },
    async destroy() {
      if (destroyed) return;
      destroyed = true;
      await Promise.all(
        [...children].map(
          (c) =>
            new Promise<void>((resolve) => {
              if (c.exitCode !== null || c.signalCode !== null || c.pid === undefined) return resolve();
              const k = setTimeout(() => {
                try {
                  process.kill(c.pid!, 'SIGKILL');
                } catch {
                  /* gone */
                }
              }, 2000);
              c.once('close', () => {
                clearTimeout(k);
                resolve();
              });
              try {
                process.kill(c.pid, 'SIGTERM');
              } catch {
                clearTimeout(k);
                resolve();
              }
            }),
        ),
      );
      for (const l of links) run(['ip', '-n', ns, 'link', 'del', l], 10_000, false);
      run(['ip', 'netns', 'del', ns], 10_000, false);
    },
  };
  return self;
}
