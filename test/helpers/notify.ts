/**
 * A service manager's notification socket, as systemd makes it for a `Type=notify` service: an AF_UNIX
 * datagram socket with SO_PASSCRED, so that each message arrives with its sender's pid (systemd's
 * NotifyAccess=main accepts only the main pid's). Node has no unix datagram sockets, so python3 (a
 * dependency of the build) receives and prints each message as a JSON line. Ended by its pid.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Netns } from '../../harness/netns.ts';

const RECEIVER = `
import json, socket, struct, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind('\\0' + addr[1:] if addr.startswith('@') else addr)
print(json.dumps({'bound': True}), flush=True)
while True:
    data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = None
    for level, kind, d in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack('iII', d[:12])[0]
    print(json.dumps({'pid': pid, 'text': data.decode()}), flush=True)
`;

/**
 * Datagram sockets bound at `addresses` (paths, or '@name' for abstract ones) by a process that never
 * reads them, so that their queues fill; resolves once all are bound. End it by its pid.
 */
export async function stuckReceiver(addresses: string[]): Promise<ChildProcess> {
  const script = `
import socket, sys, time
held = []
for a in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind('\\0' + a[1:] if a.startswith('@') else a)
    held.append(s)
print('bound', flush=True)
time.sleep(60)
`;
  const py = spawn('python3', ['-c', script, ...addresses], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve, reject) => {
    py.stdout!.once('data', resolve);
    py.once('exit', (code) => reject(new Error(`the stuck receiver exited (${code}) before binding ${addresses.join(', ')}`)));
  });
  return py;
}

/** Calls `onLine` with each JSON line `child` prints; returns what it wrote on stderr so far. */
export function readJsonLines(child: ChildProcess, onLine: (line: Record<string, unknown>) => void): () => string {
  let buf = '';
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
      buf = buf.slice(nl + 1);
      onLine(line);
    }
  });
  return () => err;
}

/** A notification's `KEY=value` lines as fields. */
export function notifyFields(text: string): Record<string, string> {
  return Object.fromEntries(text.split('\n').filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
}

/** One datagram: its sender and its KEY=value fields. */
export interface NotifyMessage {
  pid: number;
  fields: Record<string, string>;
}

export interface NotifyReceiver {
  /** NOTIFY_SOCKET's value for the service. */
  address: string;
  /** Every message so far, in order. */
  messages: NotifyMessage[];
  /** The first message at index ≥ `from` that `pred` accepts; rejects after `timeoutMs`. */
  next(pred: (m: NotifyMessage) => boolean, opts?: { from?: number; timeoutMs?: number }): Promise<NotifyMessage>;
  close(): void;
}

/**
 * Binds `address` (a path, or '@name' for an abstract socket, which lives in a network namespace: pass
 * the namespace the service runs in) and resolves once it is bound.
 */
export function notifyReceiver(address: string, ns?: Netns): Promise<NotifyReceiver> {
  const argv = ['python3', '-c', RECEIVER, address];
  const child: ChildProcess = ns ? spawn('ip', ['netns', 'exec', ns.name, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] }) : spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const messages: NotifyMessage[] = [];
  const waiters = new Set<() => void>();
  let bound: () => void;
  const isBound = new Promise<void>((resolve) => (bound = resolve));
  const err = readJsonLines(child, (line) => {
    if (line['bound']) bound();
    else messages.push({ pid: line['pid'] as number, fields: notifyFields(line['text'] as string) });
    for (const w of waiters) w();
  });
  const r: NotifyReceiver = {
    address,
    messages,
    next(pred, opts = {}) {
      const from = opts.from ?? 0;
      return new Promise((resolve, reject) => {
        const check = (): boolean => {
          const m = messages.slice(from).find(pred);
          if (!m) return false;
          waiters.delete(w);
          clearTimeout(t);
          resolve(m);
          return true;
        };
        const w = (): void => void check();
        const t = setTimeout(() => {
          waiters.delete(w);
          reject(new Error(`no such notification within ${opts.timeoutMs ?? 10_000} ms; got ${JSON.stringify(messages.slice(from))}`));
        }, opts.timeoutMs ?? 10_000);
        waiters.add(w);
        check();
      });
    },
    close() {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) process.kill(child.pid, 'SIGKILL');
    },
  };
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`the notification receiver did not bind ${address}: ${err()}`)), 10_000);
    child.on('exit', (code) => reject(new Error(`the notification receiver exited (${code}): ${err()}`)));
    void isBound.then(() => {
      clearTimeout(t);
      resolve(r);
    });
  });
}
