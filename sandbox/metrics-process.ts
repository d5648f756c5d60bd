/**
 * Process metrics that still work inside the jail: resident memory, open fds, CPU time, threads.
 *
 * The usual sources do not survive it. Node's process.memoryUsage() opens /proc/self/stat on every
 * call, and listing /proc/self/fd opens a directory; the jail denies openat, and after --chroot there
 * is no /proc at all. So /proc/self/status is opened once, before the jail, and re-read in place
 * (pread at offset 0 makes the kernel render it afresh). Open fds are counted by listing /proc/self/fd
 * while that works, and inside the jail by fstat over [0, RLIMIT_NOFILE) — the jail sets that limit
 * (1024 by default), so a count costs about a thousand failed fstat calls, 3–10 ms on the main thread
 * once per scrape (measured on a 2-CPU machine). CPU time comes from getrusage (process.cpuUsage), which the jail allows.
 *
 *   ProcessSampler (opened in `lgnet serve` step 2) ──▶ sample() per scrape (sandbox/prometheus.ts)
 */
import { fstatSync, readdirSync, readFileSync } from 'node:fs';
import { ProcFile } from './proc-file.ts';

/** Above this fd limit, open fds are not counted by fstat (too slow for a scrape). */
const MAX_PROBED_FDS = 65536;

/** One reading of the process. A field is undefined when its source is not available here. */
export interface ProcessSample {
  /** Resident set size, bytes (VmRSS). */
  residentBytes: number | undefined;
  /** Open file descriptors. */
  openFds: number | undefined;
  /** The fd limit (RLIMIT_NOFILE, soft). */
  maxFds: number | undefined;
  /** Threads of the process (Threads: in /proc/self/status). */
  threads: number | undefined;
  /** CPU time in user mode, seconds. */
  cpuUserSeconds: number;
  /** CPU time in kernel mode, seconds. */
  cpuSystemSeconds: number;
  /** When the process started, seconds since the Unix epoch. */
  startTimeSeconds: number;
}

/** Reads the process's own figures; open it before the jail (see the file header). */
export class ProcessSampler {
  /** No /proc: memory and threads stay unknown (read() answers undefined). */
  private readonly status = new ProcFile('/proc/self/status');
  private fdLimit: number | undefined;
  private listable = true;
  private readonly startTime = Math.round((Date.now() / 1000 - process.uptime()) * 1000) / 1000;

  constructor() {
    this.fdLimit = softFdLimit();
  }

  /**
   * The process entered the jail: /proc/self/fd can no longer be listed, and RLIMIT_NOFILE is now
   * `maxFds` (JailReport.rlimits.nofile), which bounds the fstat count.
   */
  jailed(maxFds: number): void {
    this.listable = false;
    this.fdLimit = maxFds;
  }

  sample(): ProcessSample {
    const cpu = process.cpuUsage();
    const status = this.readStatus();
    return {
      residentBytes: status?.rssKb === undefined ? undefined : status.rssKb * 1024,
      threads: status?.threads,
      openFds: this.countFds(),
      maxFds: this.fdLimit,
      cpuUserSeconds: cpu.user / 1e6,
      cpuSystemSeconds: cpu.system / 1e6,
      startTimeSeconds: this.startTime,
    };
  }

  /** Closes /proc/self/status (idempotent). */
  close(): void {
    this.status.close();
  }

  private readStatus(): { rssKb: number | undefined; threads: number | undefined } | undefined {
    const text = this.status.read();
    if (text === undefined) return undefined;
    const field = (name: string): number | undefined => {
      const m = new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(text);
      return m ? Number(m[1]) : undefined;
    };
    return { rssKb: field('VmRSS'), threads: field('Threads') };
  }

  private countFds(): number | undefined {
    if (this.listable) {
      try {
        return readdirSync('/proc/self/fd').length - 1; // less the directory's own fd
      } catch {
        this.listable = false; // chroot or seccomp: count by fstat from now on
      }
    }
    // Probing a limit of a million (Node raises the soft limit to the hard one) would take seconds.
    if (this.fdLimit === undefined || this.fdLimit > MAX_PROBED_FDS) return undefined;
    let open = 0;
    // Most probes fail with EBADF; without stack traces a failure costs half as much.
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      for (let fd = 0; fd < this.fdLimit; fd++) {
        try {
          fstatSync(fd);
          open++;
        } catch {
          /* EBADF: not open */
        }
      }
    } finally {
      Error.stackTraceLimit = limit;
    }
    return open;
  }
}

/** The soft RLIMIT_NOFILE from /proc/self/limits (read before the jail), or undefined. */
function softFdLimit(): number | undefined {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'latin1'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}
