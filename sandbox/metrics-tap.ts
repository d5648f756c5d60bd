/**
 * The tap interface's own counters, as the kernel keeps them: above all the frames it dropped before
 * lgnet could read them (its queue to lgnet full: the guest gave no RX buffers, or lgnet fell behind)
 * and those lgnet wrote that it dropped after. lgnet's per-queue counters cannot see either; with these
 * every frame between the guest and the host is counted on one endpoint.
 *
 * The kernel's view of a namespace's interfaces, /proc/self/net/dev, is opened once, before the jail
 * (which forbids opening files and may chroot away /proc), and re-read in place: a read at offset 0
 * renders it afresh. The file lists the interfaces of the namespace lgnet runs in; a tap handed over
 * (--tap-fd) from another namespace is checked for with TUNGETDEVNETNS and then left out, since a
 * same-named interface here would be another one.
 *
 *   TapCounters (opened in `lgnet serve` step 2) ──▶ sample() per scrape (sandbox/prometheus.ts)
 */
import { statSync } from 'node:fs';
import * as native from '../native/index.ts';
import { ProcFile } from './proc-file.ts';

/** One direction of the tap's counters. */
export interface TapDirection {
  frames: number;
  bytes: number;
  dropped: number;
  errors: number;
}

/**
 * The tap's counters, named from the guest's side: `toGuest` is what the kernel queued for lgnet to
 * read (the interface's transmit side), `fromGuest` what lgnet wrote (its receive side).
 */
export interface TapSample {
  toGuest: TapDirection;
  fromGuest: TapDirection;
}

/** Why a tap's counters are not read; undefined when they are. */
export type TapCountersUnavailable = 'no /proc/self/net/dev' | 'the tap is in another network namespace' | 'the tap is not listed';

/** Reads one interface's line of /proc/self/net/dev; open it before the jail (see the file header). */
export class TapCounters {
  /** The tap's interface name. */
  readonly name: string;
  /** A macvtap's counters, whose directions are a tun tap's swapped. */
  private readonly macvtap: boolean;
  private readonly file: ProcFile | undefined;
  /** Why sample() answers undefined, when it always will. */
  readonly unavailable: TapCountersUnavailable | undefined;

  /**
   * @param name the tap's interface name
   * @param tapFd one of its fds, to tell whether the interface is in this process's namespace
   * @param opts.macvtap the interface is a macvtap: what lgnet writes is its transmit side, what it
   *   reads its receive side (a tun tap's are the other way round)
   */
  constructor(name: string, tapFd?: number, opts: { macvtap?: boolean } = {}) {
    this.name = name;
    this.macvtap = opts.macvtap === true;
    if (tapFd !== undefined && !sameNamespace(tapFd)) {
      this.unavailable = 'the tap is in another network namespace';
      return;
    }
    this.file = new ProcFile('/proc/self/net/dev', 64 * 1024);
    if (!this.file.isOpen) this.unavailable = 'no /proc/self/net/dev';
    else if (!this.sample()) this.unavailable = 'the tap is not listed';
  }

  /** The counters now, or undefined when the interface is not listed (gone, renamed, or never here). */
  sample(): TapSample | undefined {
    const text = this.file?.read();
    const s = text === undefined ? undefined : parseNetDev(text, this.name);
    return s && this.macvtap ? { toGuest: s.fromGuest, fromGuest: s.toGuest } : s;
  }

  /** Closes the file (idempotent). */
  close(): void {
    this.file?.close();
  }
}

/**
 * One interface's counters from the text of /proc/net/dev: after "NAME:", eight receive columns
 * (bytes packets errs drop fifo frame compressed multicast) then eight transmit columns (bytes packets
 * errs drop fifo colls carrier compressed). undefined when the name is not listed.
 */
export function parseNetDev(text: string, name: string): TapSample | undefined {
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0 || line.slice(0, colon).trim() !== name) continue;
    const v = line.slice(colon + 1).trim().split(/\s+/).map(Number);
    if (v.length < 16 || v.some((x) => !Number.isFinite(x))) return undefined;
    return {
      fromGuest: { bytes: v[0]!, frames: v[1]!, errors: v[2]!, dropped: v[3]! },
      toGuest: { bytes: v[8]!, frames: v[9]!, errors: v[10]!, dropped: v[11]! },
    };
  }
  return undefined;
}

/** Whether the tap's interface is in this process's network namespace (true when the kernel will not say). */
function sameNamespace(tapFd: number): boolean {
  let ino: number;
  try {
    ino = native.tapNetnsInode(tapFd);
  } catch {
    return true; // not attached now (a deleted tap): the name decides, as for any tap
  }
  if (ino < 0) return true;
  try {
    return statSync('/proc/self/ns/net').ino === ino;
  } catch {
    return true;
  }
}
