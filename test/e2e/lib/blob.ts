/**
 * Deterministic test data for the integrity tests, and the host side of job 'integrity'.
 *
 * blobStream(seed, size) is the AES-256-CTR keystream of a key derived from the seed: the same seed
 * and size give the same bytes in every process, fast (GB/s), and without structure a copy bug could
 * hide behind (no repeating pattern, no runs of zeros). blobSha256() hashes it without storing it.
 *
 * startBlobServer(net, ...) runs blob-server.ts inside the test namespace (ip netns exec) on the host
 * side of the tap: GET /blob (HTTP on port) sends the blob, and port + 1 takes an upload, hashes it
 * and answers with one JSON line, {"bytes":N,"sha256":"..."}; both events are also reported on the server's stdout and
 * collected here, so a test checks what the host really received, not what the guest claims.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { ChildProcess } from 'node:child_process';
import { REPO_ROOT } from '../../../scripts/qemu.ts';
import type { TapNamespace } from '../../../scripts/netns.ts';

const CHUNK = 1 << 20;

/** The blob's bytes, in chunks of up to 1 MiB. */
export function* blobChunks(seed: string, size: number): Generator<Buffer> {
  const key = createHash('sha256').update(`lgnet-e2e-blob:${seed}`).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(CHUNK);
  for (let left = size; left > 0; left -= CHUNK) {
    yield cipher.update(left >= CHUNK ? zeros : zeros.subarray(0, left));
  }
}

export function blobStream(seed: string, size: number): Readable {
  return Readable.from(blobChunks(seed, size), { objectMode: false });
}

/** sha256 (hex) of the blob for this seed and size. */
export function blobSha256(seed: string, size: number): string {
  const h = createHash('sha256');
  for (const c of blobChunks(seed, size)) h.update(c);
  return h.digest('hex');
}

export interface BlobEvent {
  event: 'listening' | 'sent' | 'received' | 'error';
  bytes?: number;
  /** received: 'eof' (the client half-closed) or 'idle' (no data for 20 s). */
  end?: string;
  sha256?: string;
  ms?: number;
  message?: string;
}

export interface BlobServer {
  child: ChildProcess;
  events: BlobEvent[];
}

/** Starts the blob server inside the namespace, bound to host:port; resolves once it listens. */
export function startBlobServer(net: TapNamespace, o: { host: string; port: number; seed: string; size: number }): Promise<BlobServer> {
  const child = net.spawn([
    process.execPath,
    '--import', `file://${join(REPO_ROOT, 'node_modules/tsx/dist/loader.mjs')}`,
    join(REPO_ROOT, 'test/e2e/lib/blob-server.ts'),
    o.host, String(o.port), o.seed, String(o.size),
  ]);
  const events: BlobEvent[] = [];
  let stderr = '';
  let partial = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => (stderr += d));
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`blob server did not listen within 15 s: ${stderr}`)), 15_000);
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      partial += d;
      let nl: number;
      while ((nl = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        try {
          const ev = JSON.parse(line) as BlobEvent;
          events.push(ev);
          if (ev.event === 'listening') {
            clearTimeout(t);
            resolve({ child, events });
          }
        } catch {
          /* not ours */
        }
      }
    });
    child.on('close', (code) => {
      clearTimeout(t);
      reject(new Error(`blob server exited (${code}) before listening: ${stderr}`));
    });
  });
}
