/**
 * The device side of a split ring over guest memory the input describes: the descriptor walker
 * (direct, indirect, chained, looping, out of range), chains read and written, completions, rewinds
 * and notification toggles. The case generator is test/vring/fuzz-case.ts, drawing from the input;
 * its properties: only VringError is thrown, every piece stays inside its region, guard bytes around
 * the regions are never written.
 */
import { fuzzCaseWith } from '../../test/vring/fuzz-case.ts';
import { byteRand, type FuzzTarget } from '../target.ts';

export default {
  about: 'split ring: descriptor walker and chains over guest memory built from the input',
  maxLen: 4096,
  run(data) {
    fuzzCaseWith(byteRand(data));
  },
} satisfies FuzzTarget;
