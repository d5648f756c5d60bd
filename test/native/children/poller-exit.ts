/**
 * Child process for wait.test.ts: does an FdPoller keep the event loop alive? argv[2] is the mode;
 * the process prints what happened and must exit on its own (the parent times it).
 */
import { close, eventfdCreate, FdPoller, POLL } from '../../../native/index.ts';

const mode = process.argv[2];
const fd = eventfdCreate({ nonblocking: true });
const p = new FdPoller(fd, () => {});
const t0 = Date.now();
switch (mode) {
  case 'stopped':
    p.start(POLL.READABLE);
    p.stop();
    break;
  case 'closed':
    p.start(POLL.READABLE);
    p.close();
    p.close();
    close(fd);
    break;
  case 'unref':
    p.start(POLL.READABLE);
    p.unref();
    break;
  case 'started':
    // Keeps the loop alive until the timer closes it.
    p.start(POLL.READABLE);
    setTimeout(() => p.close(), 300).unref();
    break;
  case 'never-closed':
    // Left open and unreferenced: exit must still be clean.
    break;
}
process.on('exit', () => console.log(`exit after ${Date.now() - t0} ms`));
