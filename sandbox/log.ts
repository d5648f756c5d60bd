/**
 * Structured logs: pino, JSON lines on stderr (stdout carries only the one "ready" line of `lgnet
 * serve`). Library code (sandbox/vhost-user/) takes the small Logger interface below, so that it can
 * run silent in tests or with any pino-compatible logger.
 */
import { pino } from 'pino';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

type LogFn = (obj: object, msg?: string) => void;

/** The subset of pino's API lgnet's code uses. */
export interface Logger {
  error: LogFn;
  warn: LogFn;
  info: LogFn;
  debug: LogFn;
  child(bindings: Record<string, unknown>): Logger;
}

/** A pino logger writing synchronously to stderr (nothing is lost when the process exits). */
export function createLogger(opts: { level?: LogLevel; name?: string } = {}): Logger {
  return pino(
    { name: opts.name ?? 'lgnet', level: opts.level ?? 'info', base: { pid: process.pid } },
    pino.destination({ dest: 2, sync: true }),
  );
}

const noop: LogFn = () => {};

/** A logger that drops everything. */
export const silentLogger: Logger = { error: noop, warn: noop, info: noop, debug: noop, child: () => silentLogger };
