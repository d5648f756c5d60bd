/**
 * The HTTP plumbing that `lgnet serve`'s two local endpoints share: the Prometheus endpoint
 * (--metrics-listen, metrics-listen.ts) and the control socket (--api-socket, api.ts).
 *
 * Every peer is untrusted: headers and requests are time-limited, connections are capped (they cost
 * fds, and the jail bounds fds), and a request the HTTP parser rejects gets a 400 and a close, never
 * an exception on the main thread, which also serves the vhost-user channel. Inside the jail serving
 * needs only accept4, read, write/writev and close; the socket is bound before it. Node's TCP_NODELAY
 * (a setsockopt the jail does not allow) is off: each answer is one write.
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/** Concurrent connections of one endpoint; more are refused at accept. */
export const MAX_CONNECTIONS = 8;

const BAD_REQUEST_BODY = 'not an HTTP request lgnet can read\n';

/** Where an endpoint listens: a unix path, a loopback port, or a socket a service manager made. */
export type HttpBind = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number } | { kind: 'fd'; fd: number };

export interface HttpEndpointOptions {
  /** How the endpoint is named in messages, e.g. `--metrics-listen`. */
  flag: string;
  /** The error for a unix path that exists and is not a socket. */
  pathNotSocket: (message: string) => Error;
  /** The error for a bind that failed. */
  listenFailed: (message: string, cause: Error) => Error;
  /** Told of each request the parser rejected (answered 400). */
  onBadRequest?: () => void;
  /** A unix socket file's mode, set by the umask while it is bound (no moment with a wider one). */
  mode?: number;
}

/** A listening endpoint. */
export interface HttpEndpoint {
  readonly server: Server;
  /** What the kernel bound (server.address()). */
  readonly bound: string | AddressInfo | null;
  /** Stops listening, ends open connections, removes a unix socket file (best effort). Idempotent. */
  close(): Promise<void>;
}

/** Replaces a stale socket file (a killed lgnet's); refuses to touch any other kind of file. */
function removeStaleSocket(path: string, o: HttpEndpointOptions): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // absent
  }
  if (!st.isSocket()) throw o.pathNotSocket(`${o.flag} ${path} exists and is not a socket; give a path to a new file`);
  unlinkSync(path);
}

/** Where a bind is, for messages. */
function describeBind(b: HttpBind): string {
  if (b.kind === 'fd') return `the socket handed over as fd ${b.fd}`;
  return b.kind === 'unix' ? b.path : b.host.includes(':') ? `[${b.host}]:${b.port}` : `${b.host}:${b.port}`;
}

/** Opens an HTTP endpoint that hands each request to `handle`; resolves once it accepts connections. */
export async function listenHttp(bind: HttpBind, handle: (req: IncomingMessage, res: ServerResponse) => void, o: HttpEndpointOptions): Promise<HttpEndpoint> {
  if (bind.kind === 'unix') removeStaleSocket(bind.path, o);
  const sockets = new Set<Socket>();
  // Sockets whose request is with the handler: a body that breaks off there is the handler's to answer
  // (it reads the body), so it is neither answered nor counted twice.
  const handling = new WeakSet<Socket>();
  const server: Server = createServer({
    noDelay: false, keepAlive: false, requestTimeout: 10_000, headersTimeout: 5_000, connectionsCheckingInterval: 1_000, maxHeaderSize: 8192,
  }, (req, res) => {
    handling.add(req.socket);
    res.once('close', () => handling.delete(req.socket));
    handle(req, res);
  });
  server.maxConnections = MAX_CONNECTIONS;
  server.keepAliveTimeout = 5_000;
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  // Not HTTP (or too large, or too slow): a 400 if the socket still takes it, then close. This
  // replaces Node's default handler so that the answer is counted.
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    if (err.code === 'ECONNRESET' || !socket.writable || handling.has(socket)) {
      socket.destroy();
      return;
    }
    o.onBadRequest?.();
    socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: ${BAD_REQUEST_BODY.length}\r\n\r\n${BAD_REQUEST_BODY}`);
  });
  await new Promise<void>((resolve, reject) => {
    const hint = bind.kind === 'fd' ? ' (it must be a stream socket: ListenStream= in the .socket unit)' : '';
    const fail = (e: Error) => reject(o.listenFailed(`cannot listen on ${describeBind(bind)}: ${e.message}${hint}`, e));
    server.once('error', fail);
    const done = () => {
      server.off('error', fail);
      resolve();
    };
    if (bind.kind === 'unix') {
      // The bind happens within listen(); the umask is the process's, so it is put back at once.
      const umask = o.mode !== undefined ? process.umask(~o.mode & 0o777) : undefined;
      try {
        server.listen(bind.path, done);
      } finally {
        if (umask !== undefined) process.umask(umask);
      }
    } else if (bind.kind === 'fd') server.listen({ fd: bind.fd }, done);
    else server.listen({ host: bind.host, port: bind.port, ipv6Only: bind.host === '::1' }, done);
  });
  server.on('error', () => { /* after listen: accept errors (EMFILE) are retried by libuv; nothing to do */ });
  let closing: Promise<void> | null = null;
  return {
    server,
    bound: server.address(),
    close() {
      closing ??= new Promise<void>((done) => {
        server.close(() => done());
        for (const s of sockets) s.destroy();
        if (bind.kind === 'unix') {
          try {
            unlinkSync(bind.path);
          } catch {
            /* gone already, or the jail forbids unlink (the socket reaper removes it) */
          }
        }
      });
      return closing;
    },
  };
}
