/**
 * The part of a service manager that keeps a service's fds across its restarts (systemd's fd store,
 * FileDescriptorStoreMax=), played by a python3 process, since systemd cannot run as PID 1 here and
 * Node has no unix datagram sockets. As systemd does, it:
 *
 * - binds the notification socket (SO_PASSCRED) and reads every datagram with its sender's pid;
 * - keeps the fds of a `FDSTORE=1` message under its FDNAME, replacing what that name held; closes them
 *   on `FDSTOREREMOVE=1`; closes the fds of any other message;
 * - starts the service (fork, then exec) with the kept fds as 3, 4, … in the order they were stored,
 *   LISTEN_FDS, LISTEN_PID (the pid itself, as only a fork can know it), LISTEN_FDNAMES,
 *   NOTIFY_SOCKET and FDSTORE (the store's size), the service's stdout and stderr going to files.
 *
 * Commands go in on stdin and events come out on stdout, one JSON object a line. End it by its pid;
 * its kept fds close with it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { notifyFields, readJsonLines } from './notify.ts';

const MANAGER = `
import array, fcntl, json, os, select, socket, struct, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind(addr)
store = {}
def out(o):
    print(json.dumps(o), flush=True)
out({'bound': True})
while True:
    try:
        while True:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0: break
            out({'exited': pid, 'status': status})
    except ChildProcessError:
        pass
    r, _, _ = select.select([s, sys.stdin], [], [], 0.05)
    if s in r:
        data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12) + socket.CMSG_SPACE(64 * 4))
        pid, fds = None, []
        for level, kind, d in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack('iII', d[:12])[0]
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array('i', d[:len(d) - len(d) % 4])
        text = data.decode()
        fields = dict(l.split('=', 1) for l in text.split('\\n') if '=' in l)
        name = fields.get('FDNAME', 'stored')
        if fields.get('FDSTORE') == '1' and fds:
            for fd in store.pop(name, []): os.close(fd)
            store[name] = fds
            fds = []
        elif fields.get('FDSTOREREMOVE') == '1':
            for fd in store.pop(name, []): os.close(fd)
        for fd in fds: os.close(fd)
        out({'pid': pid, 'text': text, 'fds': len(fds) if fields.get('FDSTORE') != '1' else len(store.get(name, []))})
    if sys.stdin in r:
        line = sys.stdin.readline()
        if not line: break
        cmd = json.loads(line)
        if cmd['op'] == 'store':
            out({'store': list(store)})
        elif cmd['op'] == 'start':
            names = [n for n in store for _ in store[n]]
            kept = [fd for n in store for fd in store[n]]
            child = os.fork()
            if child == 0:
                high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for fd in kept]
                o = os.open(cmd['stdout'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                e = os.open(cmd['stderr'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(o, 1); os.dup2(e, 2)
                for i, fd in enumerate(high): os.dup2(fd, 3 + i, inheritable=True)
                os.closerange(3 + len(high), 65536)
                env = dict(cmd['env'])
                env['NOTIFY_SOCKET'] = addr
                if cmd.get('fdstore'): env['FDSTORE'] = str(cmd['fdstore'])
                if high:
                    env['LISTEN_FDS'] = str(len(high))
                    env['LISTEN_PID'] = str(os.getpid())
                    env['LISTEN_FDNAMES'] = ':'.join(names)
                os.execvpe(cmd['argv'][0], cmd['argv'], env)
            out({'started': child, 'fds': names})
`;

/** A datagram the service sent: its sender's pid, its fields, and the fds it carried (or now kept under its name). */
export interface ManagerMessage {
  pid: number;
  fields: Record<string, string>;
  fds: number;
}

export interface ServiceManager {
  /** NOTIFY_SOCKET's value for the service. */
  address: string;
  messages: ManagerMessage[];
  /** Exits of the services it started: pid → wait status. */
  exits: Map<number, number>;
  /**
   * Starts `argv` with the kept fds handed over (and FDSTORE=`fdStore` when given); resolves with its
   * pid and the names of the fds it was handed, in fd order from 3.
   */
  start(argv: string[], o: { env: Record<string, string>; stdout: string; stderr: string; fdStore?: number }): Promise<{ pid: number; fds: string[] }>;
  /** The names under which fds are kept now. */
  store(): Promise<string[]>;
  /** The first message at index ≥ `from` that `pred` accepts; rejects after `timeoutMs`. */
  next(pred: (m: ManagerMessage) => boolean, opts?: { from?: number; timeoutMs?: number }): Promise<ManagerMessage>;
  /** Resolves once the service `pid` has exited (its wait status). */
  exited(pid: number, timeoutMs?: number): Promise<number>;
  close(): void;
}

/** Binds `address` (a path) and resolves once it is bound. */
export function serviceManager(address: string): Promise<ServiceManager> {
  const child: ChildProcess = spawn('python3', ['-c', MANAGER, address], { stdio: ['pipe', 'pipe', 'pipe'] });
  const messages: ManagerMessage[] = [];
  const exits = new Map<number, number>();
  const replies: Array<(o: Record<string, unknown>) => void> = [];
  const waiters = new Set<() => void>();
  let bound: () => void;
  const isBound = new Promise<void>((resolve) => (bound = resolve));
  const err = readJsonLines(child, (line) => {
    if (line['bound']) bound();
    else if (line['exited'] !== undefined) exits.set(line['exited'] as number, line['status'] as number);
    else if (line['text'] !== undefined) messages.push({ pid: line['pid'] as number, fields: notifyFields(line['text'] as string), fds: line['fds'] as number });
    else replies.shift()?.(line);
    for (const w of waiters) w();
  });
  const ask = (cmd: Record<string, unknown>): Promise<Record<string, unknown>> => new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`the service manager did not answer ${JSON.stringify(cmd)}: ${err()}`)), 10_000);
    replies.push((o) => {
      clearTimeout(t);
      resolve(o);
    });
    child.stdin!.write(JSON.stringify(cmd) + '\n');
  });
  const until = <T>(what: string, get: () => T | undefined, timeoutMs: number): Promise<T> => new Promise((resolve, reject) => {
    const check = (): void => {
      const v = get();
      if (v === undefined) return;
      waiters.delete(check);
      clearTimeout(t);
      resolve(v);
    };
    const t = setTimeout(() => {
      waiters.delete(check);
      reject(new Error(`${what} within ${timeoutMs} ms; messages: ${JSON.stringify(messages)}; ${err()}`));
    }, timeoutMs);
    waiters.add(check);
    check();
  });
  const m: ServiceManager = {
    address,
    messages,
    exits,
    async start(argv, o) {
      const r = await ask({ op: 'start', argv, env: o.env, stdout: o.stdout, stderr: o.stderr, ...(o.fdStore ? { fdstore: o.fdStore } : {}) });
      return { pid: r['started'] as number, fds: r['fds'] as string[] };
    },
    async store() {
      return (await ask({ op: 'store' }))['store'] as string[];
    },
    next(pred, opts = {}) {
      return until('no such notification', () => messages.slice(opts.from ?? 0).find(pred), opts.timeoutMs ?? 20_000);
    },
    exited(pid, timeoutMs = 10_000) {
      return until(`service ${pid} did not exit`, () => exits.get(pid), timeoutMs);
    },
    close() {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) process.kill(child.pid, 'SIGKILL');
    },
  };
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`the service manager did not bind ${address}: ${err()}`)), 10_000);
    child.on('exit', (code) => reject(new Error(`the service manager exited (${code}): ${err()}`)));
    void isBound.then(() => {
      clearTimeout(t);
      resolve(m);
    });
  });
}
