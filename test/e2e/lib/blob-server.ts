/**
 * Host side of the guest's job 'integrity' (see blob.ts). Started inside a test namespace:
 *   node --import tsx blob-server.ts HOST PORT SEED SIZE
 *   HTTP on PORT:      GET /blob sends the blob (content-length SIZE)
 *   TCP on PORT + 1:   upload: everything up to the client's EOF is hashed, then one JSON line
 *                      {"bytes":N,"sha256":"..."} is written back and the connection closed (also after
 *                      20 s without data, so a lost segment cannot hang the guest)
 * (busybox wget --post-file sends its file as a C string, so it cannot upload binary data: the guest
 * uploads with busybox nc, which half-closes at the end of its input.)
 * Prints one JSON line per event on stdout: listening, sent, received, error. Serves until killed.
 */
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { blobStream } from './blob.ts';

const [host, portArg, seed, sizeArg] = process.argv.slice(2);
const port = Number(portArg);
const size = Number(sizeArg);
if (!host || !seed || !Number.isInteger(port) || !Number.isInteger(size) || size < 0) {
  process.stderr.write('usage: blob-server.ts HOST PORT SEED SIZE\n');
  process.exit(2);
}
const report = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);

const server = createServer((req, res) => {
  const t0 = performance.now();
  if (req.method === 'GET' && req.url === '/blob') {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) });
    pipeline(blobStream(seed, size), res).then(
      () => report({ event: 'sent', bytes: size, ms: Math.round(performance.now() - t0) }),
      (e: Error) => report({ event: 'error', message: `GET /blob: ${e.message}` }),
    );
  } else {
    res.writeHead(404).end();
  }
});
server.requestTimeout = 120_000;

const upload = createTcpServer({ allowHalfOpen: true }, (sock) => {
  const t0 = performance.now();
  const h = createHash('sha256');
  let bytes = 0;
  let finished = false;
  const finish = (why: string) => {
    if (finished) return;
    finished = true;
    const r = { bytes, sha256: h.digest('hex') };
    report({ event: 'received', ...r, end: why, ms: Math.round(performance.now() - t0) });
    sock.end(`${JSON.stringify(r)}\n`);
  };
  sock.setTimeout(20_000, () => finish('idle'));
  sock.on('data', (c: Buffer) => {
    bytes += c.length;
    h.update(c);
  });
  sock.on('end', () => finish('eof'));
  sock.on('error', (e) => report({ event: 'error', message: `upload: ${e.message}` }));
});

let listening = 0;
const up = () => ++listening === 2 && report({ event: 'listening', host, port, uploadPort: port + 1 });
server.listen(port, host, up);
upload.listen(port + 1, host, up);
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => process.exit(0));
