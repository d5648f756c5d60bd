/**
 * Guest memory that shrank under its mapping, for the native tap tests: two pages mapped from an
 * unsealable memfd, then the file truncated to one page, as a hostile front-end may do. The kernel's
 * copy into the second page fails with EFAULT; a user-space touch of it would raise SIGBUS (which the
 * guard takes), so nothing here touches it.
 */
import { ftruncateSync } from 'node:fs';

import { close, IovecTable, mappingBuffer, memfdCreate, mmap, munmap } from '../../native/index.ts';

export const PAGE = 4096;

export interface ShrunkMemory {
  /** The mapping's registry id. */
  id: number;
  /** The page that is left. */
  view: Uint8Array;
  /** Three one-buffer frames of 1500 bytes: page 0, the page that is gone, page 0 at 2048. */
  table: IovecTable;
  close(): void;
}

export function shrunkMemory(): ShrunkMemory {
  const fd = memfdCreate('lgnet-shrinkable', 2 * PAGE, { sealable: false });
  const id = mmap(fd, 0, 2 * PAGE);
  ftruncateSync(fd, PAGE);
  const table = new IovecTable(4, 3);
  for (const at of [0, PAGE, 2048]) {
    table.push(id, at, 1500);
    table.endFrame();
  }
  return {
    id,
    view: new Uint8Array(mappingBuffer(id), 0, PAGE),
    table,
    close: () => {
      munmap(id);
      close(fd);
    },
  };
}
