/**
 * A macvtap in a test's namespace, as a guest on a host NIC sees it: veth pair lgva/lgvb, macvtap
 * `name` (bridge mode) on lgva, the host at `hostIp`/24 on lgvb with the guest's address as a static
 * neighbour (the guest's MAC is the macvtap's: its lower device delivers only that address to it).
 *
 * The macvtap gets an interface index of its own (scripts/netns.ts macvtapIndex), so that two suites
 * running at once do not meet at one device node.
 */
import { mac } from '../../harness/frames.ts';
import type { Netns } from '../../harness/netns.ts';
import { macvtapIndex } from '../../scripts/netns.ts';

export { macvtapIndex };

export function addMacvtap(ns: Netns, o: { name: string; hostIp: string; guestIp: string }): { guestMac: string; hostMac: Uint8Array } {
  ns.exec('ip', 'link', 'add', 'lgva', 'type', 'veth', 'peer', 'name', 'lgvb');
  ns.exec('ip', 'link', 'add', 'link', 'lgva', 'name', o.name, 'index', String(macvtapIndex()), 'type', 'macvtap', 'mode', 'bridge');
  for (const i of ['lgva', 'lgvb', o.name]) ns.exec('ip', 'link', 'set', i, 'up');
  ns.exec('ip', 'addr', 'add', `${o.hostIp}/24`, 'dev', 'lgvb');
  const guestMac = ns.exec('cat', `/sys/class/net/${o.name}/address`).trim();
  ns.exec('ip', 'neigh', 'add', o.guestIp, 'lladdr', guestMac, 'dev', 'lgvb');
  return { guestMac, hostMac: mac(ns.exec('cat', '/sys/class/net/lgvb/address').trim()) };
}
