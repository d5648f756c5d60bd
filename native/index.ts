/**
 * native/: the only layer of lgnet that makes system calls. This file is its typed facade: one loader
 * (load.ts) finds lgnet.node and hands it the NativeError class; each part validates arguments in
 * TypeScript before they cross, and fills defaults. C++ (native/*.cc) re-checks everything, so a bad fd, id, offset or
 * length gives a NativeError/TypeError/RangeError, never a crash.
 *
 * Where things sit on the data path (DESIGN.md, "Data path and threads"):
 *   guest memory   memfdCreate, mmap, mmapAnonymous, mappingBuffer, munmap   (process-wide registry)
 *   frames         tapOpen, macvtapOpen, tapSetVnetHdrSize, tapSetOffload, writevBatch, readvBatch, readvMerged,
 *                  RxFilterSpec;
 *                  io_uring: uringCreate (a restricted ring per queue), uringWritevBatch, uringReadvBatch,
 *                  uringReadvMerged, uringRxStash
 *   sleeping       eventfd*, poll, waitKick (worker threads); FdPoller (event-loop threads)
 *   control        unix sockets with SCM_RIGHTS (vhost-user)
 *   postcopy       userfaultfdDevice/New, userfaultRegister/Unregister (front-end side: userfaultRead/Wake)
 *   sandbox/tests  netnsEnter/Leave, packetOpen, fdRead/Write, no_new_privs, seccomp, set*id, rlimits
 *
 * Each part lives in the file named after its .cc; this file is the facade the rest of lgnet imports
 * as `native`. Loading: load.ts.
 */
export { NativeError } from './errors.ts';
export { IOVEC_WORDS, IovecTable } from './iovec.ts';
export { candidatePaths, nativePath } from './load.ts';
export * from './fd.ts';
export * from './eventfd.ts';
export * from './memory.ts';
export * from './tap.ts';
export * from './batch.ts';
export * from './uring.ts';
export * from './wait.ts';
export * from './poller.ts';
export * from './unix-socket.ts';
export * from './netns.ts';
export * from './hardening.ts';
export * from './userfault.ts';
