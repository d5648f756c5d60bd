/**
 * The device's own changes to its config space (embedded mode), each told to the VMM by `configChange`
 * with a new config generation: the link state the VMM sets (as QEMU's `set_link`), and the announce it
 * asks of the guest after a live migration (VIRTIO_NET_S_ANNOUNCE, cleared by the driver's
 * ANNOUNCE_ACK); and `macChange` when a driver sets its own address. The driver's part of the
 * announce is played as Linux's virtio_net plays it: a gratuitous ARP through its TX queue, which must
 * reach the host, then the ack.
 */
import { expect, it } from 'vitest';
import { STATUS } from '../../device/config.ts';
import { ACK, CTRL } from '../../device/ctrl.ts';
import type { ConfigChange, MacChange } from '../../device/net.ts';
import { arpReply, ip4, mac } from '../../harness/frames.ts';
import * as native from '../../native/index.ts';
import { sniffFrame } from '../helpers/sniff.ts';
import { createBed, type Bed } from './helpers.ts';

// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

const BROADCAST = mac('ff:ff:ff:ff:ff:ff');

function status(b: Bed): number {
  const s = b.dev.readConfig(6, 2);
  return s[0]! | (s[1]! << 8);
}

function changes(b: Bed): ConfigChange[] {
  const seen: ConfigChange[] = [];
  b.dev.on('configChange', (e: ConfigChange) => seen.push(e));
  return seen;
}

/** Whether `frame` is an ARP whose sender and target address are both `ip` (a gratuitous one). */
function isGratuitousArp(frame: Uint8Array, ip: Uint8Array): boolean {
  if (frame.length < 42 || frame[12] !== 0x08 || frame[13] !== 0x06) return false;
  const spa = frame.subarray(28, 32);
  const tpa = frame.subarray(38, 42);
  return spa.every((x, i) => x === ip[i]) && tpa.every((x, i) => x === ip[i]);
}

it("guestAnnounce: ANNOUNCE set and told to the VMM; the guest's gratuitous ARP reaches the host; ANNOUNCE_ACK clears it", async () => {
  bed = await createBed({ accept: ['VERSION_1', 'MAC', 'STATUS', 'CTRL_VQ', 'GUEST_ANNOUNCE'], driver: { ctrl: { maxPairs: 1 } } });
  const b = bed;
  const seen = changes(b);
  expect(status(b)).toBe(STATUS.LINK_UP);
  const gen = b.dev.configGeneration;
  expect(b.dev.guestAnnounce()).toBe(true);
  expect(seen).toEqual([{ generation: gen + 1, status: STATUS.LINK_UP | STATUS.ANNOUNCE }]);
  expect(b.dev.configGeneration).toBe(gen + 1);
  expect(status(b)).toBe(STATUS.LINK_UP | STATUS.ANNOUNCE);

  // The driver's answer: a gratuitous ARP for its address, seen on the host's side of the tap.
  const guestIp = ip4(b.guestIp);
  const sniff = native.withNetns(b.ns.path, () => native.packetOpen('lgtap0'));
  try {
    b.drv.send(arpReply(b.guestMac, guestIp, BROADCAST, guestIp), { kick: true });
    expect(await sniffFrame(sniff, (f) => isGratuitousArp(f, guestIp)), 'the gratuitous ARP on the host side').not.toBeNull();
  } finally {
    native.close(sniff);
  }
  expect(await b.drv.ctrl(CTRL.ANNOUNCE, CTRL.ANNOUNCE_ACK, new Uint8Array(0))).toBe(ACK.OK);
  expect(status(b)).toBe(STATUS.LINK_UP);
  expect(seen).toHaveLength(1); // the ack is the driver's own change: nothing to tell it
  // A reset drops an announce that was never acknowledged.
  expect(b.dev.guestAnnounce()).toBe(true);
  await b.dev.reset();
  expect(status(b)).toBe(STATUS.LINK_UP);
});

it('guestAnnounce without GUEST_ANNOUNCE negotiated: false, and nothing changes', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'MAC', 'STATUS', 'CTRL_VQ'], driver: { ctrl: { maxPairs: 1 } } });
  const seen = changes(bed);
  const gen = bed.dev.configGeneration;
  expect(bed.dev.guestAnnounce()).toBe(false);
  expect(status(bed)).toBe(STATUS.LINK_UP);
  expect(bed.dev.configGeneration).toBe(gen);
  expect(seen).toEqual([]);
  // The control queue refuses an ACK for an announce the driver cannot have been asked for.
  expect(await bed.drv.ctrl(CTRL.ANNOUNCE, CTRL.ANNOUNCE_ACK, new Uint8Array(0))).toBe(ACK.ERR);
});

it('setLinkUp: a change is told once, the same state again is not, and a reset keeps what the VMM set', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'MAC', 'STATUS'] });
  const seen = changes(bed);
  const gen = bed.dev.configGeneration;
  bed.dev.setLinkUp(false);
  expect(status(bed)).toBe(0);
  bed.dev.setLinkUp(false);
  expect(seen).toEqual([{ generation: gen + 1, status: 0 }]);
  await bed.dev.reset();
  expect(status(bed)).toBe(0);
  bed.dev.setLinkUp(true);
  expect(seen).toEqual([{ generation: gen + 1, status: 0 }, { generation: gen + 2, status: STATUS.LINK_UP }]);
  expect(status(bed)).toBe(STATUS.LINK_UP);
});

it('a legacy driver writing the MAC into config space: macChange, once per change', async () => {
  bed = await createBed({ accept: ['MAC'] });
  const seen: MacChange[] = [];
  bed.dev.on('macChange', (e: MacChange) => seen.push(e));
  const was = bed.dev.readConfig(0, 6);
  bed.dev.writeConfig(0, Uint8Array.of(0x52, 0x54, 0, 0, 0, 0x77));
  bed.dev.writeConfig(0, Uint8Array.of(0x52, 0x54, 0, 0, 0, 0x77));
  expect(seen).toEqual([{ mac: '52:54:00:00:00:77', previous: [...was].map((b) => b.toString(16).padStart(2, '0')).join(':') }]);
});
