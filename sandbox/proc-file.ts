/**
 * A /proc file opened once, before the jail (which forbids opening files and may chroot away /proc),
 * and re-read in place with pread at offset 0, which makes the kernel render it afresh. Used by the
 * metrics: /proc/self/status (metrics-process.ts) and /proc/self/net/dev (metrics-tap.ts).
 */
import { closeSync, openSync, readSync } from 'node:fs';

/** The largest text read (a /proc/net/dev of thousands of interfaces fits). */
const MAX_BYTES = 16 << 20;

export class ProcFile {
  private fd = -1;
  private buf: Buffer;

  /** Opens `path`; a path that cannot be opened gives a file whose read() answers undefined. */
  constructor(path: string, initialBytes = 8192) {
    this.buf = Buffer.alloc(initialBytes);
    try {
      this.fd = openSync(path, 'r');
    } catch {
      this.fd = -1;
    }
  }

  /** Whether the file was opened (and not closed). */
  get isOpen(): boolean {
    return this.fd >= 0;
  }

  /** The file's whole text now, or undefined when it is not open or the read fails. */
  read(): string | undefined {
    if (this.fd < 0) return undefined;
    for (;;) {
      let n: number;
      try {
        n = readSync(this.fd, this.buf, 0, this.buf.length, 0);
      } catch {
        return undefined;
      }
      // A read that fills the buffer may have been cut short: read it again, whole, into a larger one.
      if (n < this.buf.length || this.buf.length >= MAX_BYTES) return this.buf.toString('latin1', 0, n);
      this.buf = Buffer.alloc(this.buf.length * 2);
    }
  }

  /** Closes the file (idempotent). */
  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}
