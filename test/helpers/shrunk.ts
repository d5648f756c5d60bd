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
  /** One-buffer frames: by default three of 1500 bytes, in page 0, the page that is gone, page 0 at 2048. */
  table: IovecTable;
  close(): void;
}

/** `buffers`: the table's one-buffer frames, as [offset, length] in the two pages. */
export function shrunkMemory(buffers: Array<[number, number]> = [[0, 1500], [PAGE, 1500], [2048, 1500]]): ShrunkMemory {
  const fd = memfdCreate('lgnet-shrinkable', 2 * PAGE, { sealable: false });
  const id = mmap(fd, 0, 2 * PAGE);
  ftruncateSync(fd, PAGE);
  const table = new IovecTable(buffers.length + 64, buffers.length + 32); // room for merged reads of more frames than buffers
  for (const [at, len] of buffers) {
    table.push(id, at, len);
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
