// Regression: vring index truncation / avail.idx jumps (CVE-2020-10723: DPDK vhost trusted avail.idx
// and walked far past the ring). avail.idx more than `size` ahead of the last consumed index is a
// hostile or broken driver: the queue breaks, whatever the u16 wrap position.

import { describe, expect, it } from 'vitest';
import { RingStateError } from '../../vring/index.ts';
import { expectBreaks, makeRig } from './helpers.ts';

describe('regression-avail-idx-jump', () => {
  for (const start of [0, 100, 65530, 65535]) {
    for (const jump of [17, 255, 0x8000, 0xffff]) {
      it(`rejects a jump of ${jump} from ${start}`, () => {
        const r = makeRig({ size: 16, startIdx: start });
        expect(r.ring.jumpAvailIdx(jump)).toBe((start + jump) & 0xffff);
        expectBreaks(r.q, () => r.q.popBurst(32, []), RingStateError, 'VRING_AVAIL_IDX_JUMP');
      });
    }
  }

  it('is checked by availPending and enableNotification too', () => {
    for (const f of ['availPending', 'enableNotification', 'availIdx'] as const) {
      const r = makeRig({ size: 16 });
      r.ring.setAvailIdx(40);
      expectBreaks(r.q, () => r.q[f](), RingStateError, 'VRING_AVAIL_IDX_JUMP');
    }
  });

  it('accepts exactly size ahead across the wrap', () => {
    const r = makeRig({ size: 16, startIdx: 65530 });
    r.ring.jumpAvailIdx(16);
    expect(r.ring.availIdx).toBe((65530 + 16) & 0xffff);
    expect(r.q.availPending()).toBe(16);
  });
});
