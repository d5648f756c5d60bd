/**
 * The device side of a packed ring (virtio 1.2 §2.8): the same as vring-split, over
 * test/vring/packed-fuzz-case.ts (wrap counters, AVAIL/USED flags, ids, indirect tables).
 */
import { packedFuzzCaseWith } from '../../test/vring/packed-fuzz-case.ts';
import { byteRand, type FuzzTarget } from '../target.ts';

export default {
  about: 'packed ring: descriptor walker and chains over guest memory built from the input',
  maxLen: 4096,
  run(data) {
    packedFuzzCaseWith(byteRand(data));
  },
} satisfies FuzzTarget;
