/**
 * systemd's socket-activation hand-over (sd_listen_fds(3)): a manager that made the listening sockets
 * starts lgnet with them as fds 3, 4, … and says so in LISTEN_FDS (their count), LISTEN_PID (the pid
 * they are meant for) and optionally LISTEN_FDNAMES (colon-separated names, FileDescriptorName= in a
 * .socket unit). `lgnet serve` given neither --socket nor --socket-fd serves the one it was handed,
 * without --metrics-listen serves its Prometheus endpoint on a socket named `metrics`, and without
 * --api-socket its control socket on one named `api`.
 *
 * Like sd_listen_fds(unset_environment=1), the variables are taken out of the environment whatever
 * they hold, so that no child of lgnet (the socket reaper) reads a hand-over that is not its own.
 */

/** The first fd a manager hands over (SD_LISTEN_FDS_START). */
export const LISTEN_FDS_START = 3;

/** The name that picks lgnet's vhost-user socket among several handed over (FileDescriptorName=). */
export const VHOST_USER_FD_NAME = 'vhost-user';

/** The name of a handed-over socket that lgnet serves its Prometheus endpoint on (--metrics-listen). */
export const METRICS_FD_NAME = 'metrics';

/** The name of a handed-over socket that lgnet serves its control API on (--api-socket). */
export const API_FD_NAME = 'api';

/** Names of sockets that are not the vhost-user one. */
const OTHER_NAMES: readonly string[] = [METRICS_FD_NAME, API_FD_NAME];

/** What a manager handed over: fds from LISTEN_FDS_START, each with its name ('' when none was given). */
export interface ListenFds {
  fds: number[];
  names: string[];
}

const KEYS = ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES'] as const;

/**
 * Reads and removes the hand-over variables. undefined when there is none for this process: no
 * LISTEN_PID (sd_listen_fds requires it), one naming another process, or LISTEN_FDS not a count of at
 * least one. Throws RangeError on a LISTEN_FDS too large to be real fds.
 */
export function takeListenFds(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): ListenFds | undefined {
  const [p, n, names] = KEYS.map((k) => env[k]);
  for (const k of KEYS) delete env[k];
  if (p === undefined || !/^\d{1,10}$/.test(p) || Number(p) !== pid) return undefined;
  if (n === undefined || !/^\d{1,10}$/.test(n) || Number(n) < 1) return undefined;
  const count = Number(n);
  // An fd number above any rlimit a process can have: a corrupt variable, not a hand-over.
  if (count > 1 << 20) throw new RangeError(`LISTEN_FDS=${n} is more fds than a process can hold`);
  const fds = Array.from({ length: count }, (_, i) => LISTEN_FDS_START + i);
  // Names that do not match the count are ignored, as sd_listen_fds_with_names does not (it fails):
  // the fds are still this process's, only their names are unknown.
  const split = names?.split(':');
  return { fds, names: split && split.length === count ? split : fds.map(() => '') };
}

/**
 * The vhost-user socket of a hand-over: the only one not named METRICS_FD_NAME or API_FD_NAME, or
 * among several the one named VHOST_USER_FD_NAME. A string says why none can be chosen.
 */
export function chooseListenFd(h: ListenFds): number | string {
  const candidates = h.fds.filter((_, i) => !OTHER_NAMES.includes(h.names[i]!));
  if (candidates.length === 1) return candidates[0]!;
  const named = h.fds.filter((_, i) => h.names[i] === VHOST_USER_FD_NAME);
  if (named.length === 1) return named[0]!;
  const which = h.names.some((x) => x) ? `named ${h.names.map((x) => x || '(none)').join(', ')}` : 'without names';
  if (named.length > 1) return `${named.length} of the ${h.fds.length} sockets handed over (LISTEN_FDS) are named '${VHOST_USER_FD_NAME}': name one so`;
  if (candidates.length === 0) return `the socket${h.fds.length > 1 ? 's' : ''} handed over (LISTEN_FDS) ${h.fds.length > 1 ? 'are' : 'is'} named ${[...new Set(h.names)].map((x) => `'${x}'`).join(' and ')}: hand over the vhost-user socket too, or give --socket or --socket-fd`;
  return `${h.fds.length} sockets were handed over (LISTEN_FDS), ${which}: name lgnet's FileDescriptorName=${VHOST_USER_FD_NAME} in the .socket unit, or give --socket-fd`;
}

/** The socket named `name` in a hand-over (METRICS_FD_NAME, API_FD_NAME), undefined when none is; a string when several are. */
export function namedListenFd(h: ListenFds, name: string): number | undefined | string {
  const named = h.fds.filter((_, i) => h.names[i] === name);
  if (named.length > 1) return `${named.length} of the sockets handed over (LISTEN_FDS) are named '${name}': name one so`;
  return named[0];
}
