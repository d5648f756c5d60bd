/**
 * Test network namespaces with a tap inside, for guest tests and benchmarks.
 *
 *   const net = createTapNamespace();        // ns lgnet-<random>, tap lgtap0 with 10.0.2.1/24, up
 *   try { ... bootGuest({ netns: net.ns, netdev: { type: 'tap', ifname: net.tap }, ... }) ... }
 *   finally { await net.destroy(); }         // kills what it started (by pid), deletes tap and ns
 *
 * Traffic stays inside the namespace: the host side of the link is `hostCidr` there, and nothing
 * routes out of it. Only root can do this (ip netns, ip tuntap).
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

export interface TapNamespace {
  ns: string;
  tap: string;
  hostIp: string;
  /** Runs a command inside the namespace and waits (throws on failure unless check is false). */
  exec(argv: string[], opts?: { timeoutMs?: number; check?: boolean }): SpawnSyncReturns<string>;
  /** Starts a command inside the namespace; it is killed by pid in destroy() if still running. */
  spawn(argv: string[]): ChildProcess;
  /** `iperf3 -s` bound to the host address; resolves once it listens. Killed in destroy(). */
  startIperf3Server(opts?: { port?: number; oneOff?: boolean; timeoutMs?: number }): Promise<ChildProcess>;
  /** Kills the processes it started, deletes the tap and the namespace. Idempotent, never throws. */
  destroy(): Promise<void>;
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
  const hostIp = hostCidr.split('/')[0]!;
  const children = new Set<ChildProcess>();
  let destroyed = false;

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

  const self: TapNamespace = {
    ns,
    tap,
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
      run(['ip', '-n', ns, 'link', 'del', tap], 10_000, false);
      run(['ip', 'netns', 'del', ns], 10_000, false);
    },
  };
  return self;
}
