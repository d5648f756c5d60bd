/**
 * What rx-rig.ts and tx-rig.ts run their queue over: a tap in a namespace of its own, configured for
 * the driver's features, with an AF_PACKET socket on the namespace's side.
 *
 * A property runs many sequences; each builds a fresh rig (guest memory, driver ring, queue, loop),
 * as a driver reset does, while the backend stays, as a device's tap does across resets. LinkPool
 * hands the same link to run after run while each ends clean, and a fresh one after a run that did
 * not (it may have left frames in the tap or in the port).
 */
import * as native from '../../native/index.ts';
import { decode, mask, type FeatureName, type NegotiatedFeatures } from '../../device/features.ts';
import { TapBackend } from '../../device/tap-backend.ts';
import { createNetns, openPacketIn, type Netns } from '../../harness/netns.ts';
import type { RingFormat } from '../../vring/driver-queue.ts';
import { trackBed } from '../helpers/bed.ts';

/** The tap's name inside its namespace. */
export const LINK_IF = 'lgrig0';

export interface TapLink {
  ns: Netns;
  backend: TapBackend;
  /** AF_PACKET on LINK_IF in the namespace (nonblocking; closed with it). */
  pkt: number;
  f: NegotiatedFeatures;
  /** Set while a rig runs on it; that rig's clean close() clears it. */
  dirty: boolean;
  close(): void;
}

/** The features a rig negotiates: VERSION_1 and RING_EVENT_IDX, plus `extra` (and RING_PACKED for a packed ring). */
export function rigFeatures(format: RingFormat, extra: readonly FeatureName[] = []): NegotiatedFeatures {
  return decode(mask('VERSION_1', 'RING_EVENT_IDX', ...extra, ...(format === 'packed' ? (['RING_PACKED'] as const) : [])));
}

/** Makes a link (tracked: closed after the test). */
export function tapLink(prefix: string, f: NegotiatedFeatures): TapLink {
  const ns = createNetns(prefix);
  try {
    const backend = native.withNetns(ns.path, () => new TapBackend({ name: LINK_IF }));
    const link: TapLink = {
      ns, backend, f, dirty: false, pkt: -1,
      close() {
        backend.close();
        ns.destroy();
      },
    };
    trackBed(link);
    backend.configure(f);
    ns.exec('ip', 'link', 'set', LINK_IF, 'up');
    link.pkt = openPacketIn(ns, LINK_IF);
    return link;
  } catch (e) {
    ns.destroy();
    throw e;
  }
}

/** One link for a property's runs while they end clean (see the file's comment). */
export class LinkPool {
  private link: TapLink | null = null;
  private readonly prefix: string;
  private readonly f: NegotiatedFeatures;

  constructor(prefix: string, f: NegotiatedFeatures) {
    this.prefix = prefix;
    this.f = f;
  }

  take(): TapLink {
    if (this.link === null || this.link.dirty) {
      this.link?.close();
      this.link = tapLink(this.prefix, this.f);
    }
    this.link.dirty = true;
    return this.link;
  }
}
