/**
 * Guest memory as a thread wraps it (device/worker-protocol.ts): each thread wraps a guest mapping once
 * and keeps it while it is the device's memory, because every wrap of a large mapping costs V8 a
 * collection. The device tells its workers about new memory as it arrives, so that a queue's start
 * finds it wrapped; and a replacement under running queues still detaches the old pages at once.
 */
import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { guestMappingBuffer, keepGuestMappings } from '../../device/worker-protocol.ts';
import { createBed, udpSend, type Bed } from './helpers.ts';

// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const maps = (name: string): number => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(`/memfd:${name} `)).length;

it('a thread wraps a guest mapping once, keeps what it is told to, and skips a mapping already gone', () => {
  const fd = native.memfdCreate('lgtest-keep', 1 << 20);
  const a = native.mmap(fd, 0, 1 << 20);
  const b = native.mmap(fd, 0, 1 << 20);
  try {
    const bufA = guestMappingBuffer(a);
    expect(guestMappingBuffer(a), 'the same buffer, not a second wrap').toBe(bufA);
    new Uint8Array(bufA)[0] = 7;
    keepGuestMappings([b]);
    const bufB = guestMappingBuffer(b);
    expect(new Uint8Array(bufB)[0], 'both map the same file').toBe(7);
    expect(guestMappingBuffer(a), 'a was let go: wrapped anew').not.toBe(bufA);
    keepGuestMappings([b]);
    native.munmap(a);
    expect(() => keepGuestMappings([a, b])).not.toThrow();
    expect(guestMappingBuffer(b)).toBe(bufB);
    expect(() => guestMappingBuffer(a)).toThrow(native.NativeError);
  } finally {
    keepGuestMappings([]);
    native.munmap(b);
    native.close(fd);
  }
});

it('guest memory replaced under a running queue: frames go on in the new mapping, and the old one is detached at once', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'RING_EVENT_IDX', 'MAC'], ramMiB: 64 });
  const b = bed;
  const rx = () => b.dev.metrics().queues[0]!;
  const name = 'lgnet-guest-ram';
  // The harness's own mapping, and the device's.
  expect(maps(name)).toBe(2);
  udpSend(b, 6320, 100, 3, 10);
  expect((await b.drv.waitRx(3, { timeoutMs: 5000 })).length).toBe(3);

  for (let round = 0; round < 3; round++) {
    await b.dev.setMemory([b.ram.region()]);
    // The replaced mapping now holds anonymous zero pages: only the new one maps the file.
    expect(maps(name), `round ${round}`).toBe(2);
    const m0 = rx();
    udpSend(b, 6320, 100, 3, 10);
    expect((await b.drv.waitRx(3, { timeoutMs: 5000 })).length, `round ${round}`).toBe(3);
    expect(rx().frames - m0.frames).toBe(3);
  }
  await sleep(50);
  expect(rx().queueBroken).toBe(0);
  expect(rx().memoryFaults).toBe(0);
});

it("setMemory with keep: a region given again with its fd keeps its mapping (and address) under a running queue; one that changed is mapped anew", async () => {
  bed = await createBed({ accept: ['VERSION_1', 'RING_EVENT_IDX', 'MAC'], ramMiB: 64 });
  const b = bed;
  const id = () => b.dev.memoryMap!.regions[0]!.mappingId;
  const first = id();
  const second = native.memfdCreate('lgtest-second', 1 << 20);
  try {
    // A second region added beside the first, as ADD_MEM_REG does: the first stays where it is.
    const extra = { gpa: 1 << 30, size: 1 << 20, fd: second, mmapOffset: 0, uaddr: 0x7e00_0000_0000 };
    await b.dev.setMemory([{ ...b.ram.region(), keep: true }, extra]);
    expect(id()).toBe(first);
    const extraId = b.dev.memoryMap!.regions[1]!.mappingId;
    udpSend(b, 6321, 100, 3, 10);
    expect((await b.drv.waitRx(3, { timeoutMs: 5000 })).length).toBe(3);
    // And removed again: the first still stays; the second's mapping is released.
    await b.dev.setMemory([{ ...b.ram.region(), keep: true }]);
    expect(id()).toBe(first);
    expect(() => native.mappingSize(extraId)).toThrow(native.NativeError);
    // keep with something changed (here the user address) is a new region: mapped anew.
    await b.dev.setMemory([{ ...b.ram.region(), uaddr: b.ram.uaddr + (1 << 30), keep: true }]);
    expect(id()).not.toBe(first);
    expect(() => native.mappingSize(first)).toThrow(native.NativeError);
    // Without keep, the same region is mapped anew too (an fd number alone proves nothing).
    const third = id();
    await b.dev.setMemory([{ ...b.ram.region(), uaddr: b.ram.uaddr + (1 << 30) }]);
    expect(id()).not.toBe(third);
    udpSend(b, 6321, 100, 3, 10);
    expect((await b.drv.waitRx(3, { timeoutMs: 5000 })).length).toBe(3);
  } finally {
    native.close(second);
  }
});
