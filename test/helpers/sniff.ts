/**
 * Reading a nonblocking packet socket (harness openPacketIn, native.packetOpen) in a test: the first
 * frame that matches, as the host's side of a tap saw it.
 */
import * as native from '../../native/index.ts';

/** The first frame read from `fd` that `match` accepts within `timeoutMs`, or null. */
export async function sniffFrame(fd: number, match: (frame: Uint8Array) => boolean = () => true, timeoutMs = 3000): Promise<Uint8Array | null> {
  const buf = new Uint8Array(65536);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (let n = native.fdRead(fd, buf); n > 0; n = native.fdRead(fd, buf)) {
      const frame = buf.slice(0, n);
      if (match(frame)) return frame;
    }
    if (Date.now() > deadline) return null;
    await new Promise((r) => setTimeout(r, 10));
  }
}
