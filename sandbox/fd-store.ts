/**
 * The tap across a restart, through systemd's fd store (FileDescriptorStoreMax=, sd_notify FDSTORE=1).
 *
 * A tap that lgnet makes (--tap NAME, without --tap-fd) lives as long as some process holds one of its
 * queue fds. When lgnet dies, the kernel deletes the interface, and with it what the host set up on it:
 * its addresses, its bridge port, its qdiscs, and the frames queued for the guest. With the fd store,
 * lgnet hands the manager a duplicate of each queue's fd, named `tap/NAME/PAIR`; the manager holds them
 * while it restarts lgnet and hands them back in LISTEN_FDS with their names, and lgnet serves them as
 * it serves --tap-fd. The interface, its set-up and its queued frames are then never gone.
 *
 * The names cannot clash: an interface name holds no '/' (nor ':', LISTEN_FDNAMES' separator).
 */
import type { ListenFds } from './listen-fds.ts';

/** Codes of the fd store's log lines (KEPT is info, the others warnings). */
export const FDSTORE_CODE = {
  /** The stored tap fds are served (info). */
  KEPT: 'LGNET_FDSTORE_TAP_KEPT',
  /** Stored tap fds that do not fit this start were closed and removed from the store. */
  STALE: 'LGNET_FDSTORE_STALE',
  /** FileDescriptorStoreMax= is below the tap's queue count: nothing stored. */
  TOO_SMALL: 'LGNET_FDSTORE_TOO_SMALL',
  /** --fd-store with no service manager to hand the fds to. */
  NO_MANAGER: 'LGNET_FDSTORE_NO_MANAGER',
} as const;

/** What the names of a tap's stored queue fds start with. */
export const TAP_FD_NAME_PREFIX = 'tap/';

/** The name a queue pair's tap fd is stored under (FDNAME). */
export function tapFdName(tap: string, pair: number): string {
  return `${TAP_FD_NAME_PREFIX}${tap}/${pair}`;
}

/** The interface name in a stored fd's name. */
function tapOf(name: string): string {
  return name.slice(TAP_FD_NAME_PREFIX.length, name.lastIndexOf('/'));
}

/** Whether a handed-over fd's name says it is a stored tap queue, not a socket. */
export function isTapFdName(name: string): boolean {
  return name.startsWith(TAP_FD_NAME_PREFIX);
}

/**
 * A hand-over sorted by name: the stored tap queues, and the rest (the sockets of socket activation).
 * Either is undefined when it holds no fd.
 */
export function splitHandOver(h: ListenFds): { sockets?: ListenFds; taps?: ListenFds } {
  const part = (tap: boolean): ListenFds | undefined => {
    const at = h.names.flatMap((n, i) => (isTapFdName(n) === tap ? [i] : []));
    return at.length ? { fds: at.map((i) => h.fds[i]!), names: at.map((i) => h.names[i]!) } : undefined;
  };
  const sockets = part(false);
  const taps = part(true);
  return { ...(sockets ? { sockets } : {}), ...(taps ? { taps } : {}) };
}

/** One stored tap fd handed back: its fd and the name it was stored under. */
export interface StoredFd {
  fd: number;
  name: string;
}

/** The stored tap fds of a hand-over (names `tap/…`), each with its name. */
export function storedTapFds(h: ListenFds): StoredFd[] {
  return h.fds.map((fd, i) => ({ fd, name: h.names[i] ?? '' })).filter((s) => isTapFdName(s.name));
}

/** The stored tap fds of a hand-over, sorted into those to serve and those to give up. */
export interface StoredTaps {
  /** The queue fds of `tap`, pair 0 first, when every pair's came back and no other did. */
  fds?: number[];
  /** Their interface (the name the kernel picked, where --tap left the choice to it). */
  tap?: string;
  /** Stored tap fds not served (another tap's, or a set that does not fit --queues), and why. */
  stale: StoredFd[];
  why?: string;
}

/**
 * Picks the stored queue fds of `tap` for `queuePairs` pairs out of a hand-over. A set serves only
 * whole: one fd for each pair 0…queuePairs−1 and none beyond (a restart with another --queues makes
 * the tap anew, as its queue count is fixed by the fds that hold it).
 */
export function takeStoredTaps(h: ListenFds, tap: string, queuePairs: number): StoredTaps {
  const stored = storedTapFds(h);
  if (stored.length === 0) return { stale: [] };
  // A name the kernel picked ('' or a pattern such as tap%d) is the one the last lgnet got.
  if (tap === '' || tap.includes('%')) tap = tapOf(stored[0]!.name);
  const wanted = Array.from({ length: queuePairs }, (_, p) => tapFdName(tap, p));
  const mine = stored.filter((s) => wanted.includes(s.name));
  const twice = mine.some((s, i) => mine.findIndex((x) => x.name === s.name) !== i);
  if (mine.length === stored.length && mine.length === queuePairs && !twice) {
    return { fds: wanted.map((n) => mine.find((s) => s.name === n)!.fd), tap, stale: [] };
  }
  const names = stored.map((s) => s.name).join(', ');
  const why = twice ? `two fds are stored under one name (${names})`
    : mine.length === stored.length ? `${mine.length} of ${queuePairs} queue pairs' fds came back (${names}): the queue count changed`
    : `the fds stored (${names}) are not all of tap ${tap}'s ${queuePairs} queue pair${queuePairs > 1 ? 's' : ''}`;
  return { stale: stored, why };
}
