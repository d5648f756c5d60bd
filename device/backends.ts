/**
 * The backend registry: the one place that knows every backend module, by the `kind` of its PortSpecs.
 * A queue worker turns the spec of its queue into ports with openPorts() and loads the filter hook
 * with loadFilter(); it imports no backend module itself (backend.ts has the contracts).
 *
 *   PortSpec { kind: 'tap', … }   ──▶ tap-backend.ts  openPorts
 *   PortSpec { kind: 'pair', … }  ──▶ pair-backend.ts openPorts
 *   PortSpec { kind: 'switch', … } ──▶ switch-backend.ts openPorts
 *   anything else                 ──▶ NetConfigError NET_UNKNOWN_BACKEND
 *
 * A new backend is a module with a PortSpec type and an OpenPorts function, plus one line here.
 */
import type { OpenPorts, PortContext, PortSpec, Ports } from './backend.ts';
import { NET_ERROR, NetConfigError } from './errors.ts';
import * as pair from './pair-backend.ts';
import * as sw from './switch-backend.ts';
import * as tap from './tap-backend.ts';

/** The pair and switch backends' filter hook; a worker loads it at start, before any spec. */
export { loadFilter } from './pair-backend.ts';

/** A module's openPorts under its kind: the registry only hands it specs of that kind. */
function register<S extends PortSpec>(kind: S['kind'], open: OpenPorts<S>): [string, OpenPorts] {
  return [kind, open as OpenPorts];
}

/** kind → openPorts. A Map, so that a kind such as 'constructor' finds nothing rather than Object's. */
const REGISTRY: ReadonlyMap<string, OpenPorts> = new Map([
  register(tap.TAP_KIND, tap.openPorts),
  register(pair.PAIR_KIND, pair.openPorts),
  register(sw.SWITCH_KIND, sw.openPorts),
]);

/** The kinds a PortSpec may have. */
export const BACKEND_KINDS: readonly string[] = [...REGISTRY.keys()];

/** Worker side: the ports of `spec`, opened by the backend module of its kind. */
export function openPorts(spec: PortSpec, ctx: PortContext): Ports {
  const open = REGISTRY.get(spec.kind);
  if (open === undefined) {
    throw new NetConfigError(
      NET_ERROR.UNKNOWN_BACKEND,
      `no backend of kind ${JSON.stringify(spec.kind)}: a Backend's port() must give a spec whose kind is ` +
        `one of ${BACKEND_KINDS.join(', ')}, or its module must be registered in device/backends.ts`,
    );
  }
  return open(spec, ctx);
}
