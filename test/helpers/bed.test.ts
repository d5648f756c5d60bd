/** The shared bed lifecycle: what a test tracks is closed after it, once, even if the test closed it. */
import { expect, it } from 'vitest';

import { trackBed } from './bed.ts';

const closed: string[] = [];

it('tracks two beds, closes one early', async () => {
  const a = trackBed({ close: () => void closed.push('a') });
  trackBed({ close: () => void closed.push('b') });
  await a.close();
  await a.close();
  expect(closed).toEqual(['a']);
});

it('the next test finds both closed exactly once', () => {
  expect(closed).toEqual(['a', 'b']);
});
