// batch.h: what the two batched frame I/O paths share (batch.cc: readv/writev per frame; uring.cc:
// one io_uring_enter per burst). Both take the same IovecTable words and check them the same way, in
// one place (PrepareBatch → Translate): every entry against its mapping under one registry lock, with
// the mappings pinned until the batch's I/O is over, before anything reaches the kernel.
#pragma once

#include "common.h"
#include "registry.h"

#include <sys/uio.h>

#include <vector>

namespace lgnet {

constexpr uint32_t kIovecWords = 4;  // IOVEC_WORDS in native/iovec.ts

// The mappings one batch holds references to: a few inline, more on the heap (rare: a batch that
// touches more than kInlinePins distinct regions).
struct Pins {
  static constexpr uint32_t kInlinePins = 16;
  Mapping* inlinePins[kInlinePins];
  uint32_t count = 0;
  std::vector<Mapping*> extra;

  void Add(Mapping* m) {
    for (uint32_t i = 0; i < count; i++)
      if (inlinePins[i] == m) return;
    for (Mapping* e : extra)
      if (e == m) return;
    MappingRef(m);
    if (count < kInlinePins) inlinePins[count++] = m;
    else extra.push_back(m);
  }
  // Keeps the references for good: for I/O the kernel might still be doing after we gave up waiting
  // (uring.cc), the pages must never be unmapped under it.
  void Leak() {
    count = 0;
    extra.clear();
  }
  ~Pins() {
    for (uint32_t i = 0; i < count; i++) MappingUnref(inlinePins[i]);
    for (Mapping* e : extra) MappingUnref(e);
  }
};

// Reads an integral number argument in [lo, hi] without node-addon-api wrappers (hot path).
bool ArgInt(napi_env env, napi_value v, const char* what, double lo, double hi, int64_t* out);

// Where a read spills the byte past its buffers (never guest memory; nothing ever reads it). A tap
// reports only the bytes it copied, so a frame longer than its buffers would read as one that fills
// them exactly: a read offered one byte more than the buffers returns room + 1 for such a frame.
// Shared by every thread and by READVs in flight together: the kernel may write it concurrently.
extern uint8_t gSpill[8];

// Translates `units` consecutive units of entries, the first starting at entry `base` and unit u
// ending before entry ends[u], into iov (iov[0] is entry `base`), checking each entry against its
// mapping under one registry lock and pinning the mappings it names. A unit (a frame, or a buffer of
// readvMerged) holds at most 2^31-1 bytes; its byte count goes to room[u] when room is given. With
// `spill`, every unit is followed in iov by one iovec over gSpill (unit u then starts at iov index
// ends[u-1] - base + u). Throws NativeError(EFAULT/EINVAL, 'iovec') and returns false on a bad entry,
// before any syscall.
bool Translate(Napi::Env cenv, const uint32_t* entries, uint32_t base, const uint32_t* ends, uint32_t units,
               struct iovec* iov, Pins& pins, uint32_t* room, bool spill = false);

// One checked batch of (handle, words, maxEntries, maxFrames, frames): frame f's iovecs are
// iov[start(f), ends[f]) with start(0) = 0, start(f) = ends[f-1] (with a spill, the last of them is
// the spill iovec); bytes is the table's output array, and written the per-frame u32 array after it
// (IovecTable.written; null when the words are too short to hold it). ends and iov are this thread's
// scratch (valid until the next batch call on this thread).
struct Batch {
  int64_t handle;
  uint32_t frames;
  const uint32_t* ends;
  struct iovec* iov;
  int32_t* bytes;
  uint32_t* written;
  uint32_t* status;  // the table's status word, when the words reach it (reads: SetReadFailures)
  bool spill;
};

// Reads that failed and that neither the call's count nor its exception stands for (past a batch's first
// frame; when nothing was read, all but the one thrown): the tap had taken each frame off its queue and
// dropped it, so the caller counts each. The status word gets the count
// (saturating at 255) in bits 16-23 and the first errno in bits 24-31 (IovecTable.readFailures and
// readErrno); 0 when every read succeeded or met EAGAIN. Bits 0-15 stay clear: they are readvMerged's.
// uringReadvMerged writes the same bits beside its stop code.
inline uint32_t ReadFailureBits(uint32_t failures, int err) {
  return failures == 0 ? 0 : ((uint32_t)(err & 0xff) << 24) | ((failures > 255 ? 255u : failures) << 16);
}
inline void SetReadFailures(const Batch& b, uint32_t failures, int err) {
  if (b.status != nullptr) *b.status = ReadFailureBits(failures, err);
}

// Parses and checks a batch call's arguments (`handle` in [0, handleMax]: an fd or a ring id), copies
// the frame ends, checks each frame's shape (1..IOV_MAX entries, 1..IOV_MAX-1 with `spill`, inside
// the table) and translates every entry (Translate), with a spill iovec after each frame when asked
// (reads: see gSpill). False with a JS exception pending on any bad argument or entry; true with b
// filled otherwise (b->frames may be 0, and then nothing was translated).
bool PrepareBatch(napi_env env, napi_callback_info cbinfo, const char* usage, double handleMax, bool spill, Pins& pins, Batch* b);

// Bytes of guest memory frame f's iovecs offer (the spill iovec not counted).
inline size_t FrameRoom(const Batch& b, uint32_t f) {
  uint32_t start = f == 0 ? 0 : b.ends[f - 1];
  uint32_t end = b.spill ? b.ends[f] - 1 : b.ends[f];
  size_t room = 0;
  for (uint32_t i = start; i < end; i++) room += b.iov[i].iov_len;
  return room;
}

// One checked merged-receive call (readvMerged in batch.cc, uringReadvMerged in uring.cc):
// (handle, words, maxEntries, maxFrames, first, buffers, frames, need, maxLen, extra?). The table's
// frames first … first+buffers-1 are guest buffers; buffer b (0-based from `first`) has the iovecs
// iov[ends[b] - base, ends[b + 1] - base) and room[b] bytes, and iov has one spare iovec after the
// last buffer. bytes, used and status are the table's outputs (IovecTable.bytes/used/status). ends,
// iov and room are this thread's scratch, valid until the next merged call on this thread.
struct Merged {
  int64_t handle;
  uint32_t buffers;
  uint32_t frames;
  uint64_t need;
  int64_t maxLen;
  const uint32_t* ends;
  uint32_t base;
  struct iovec* iov;
  const uint32_t* room;
  int32_t* bytes;
  uint32_t* used;
  uint32_t* status;
  napi_value extra;  // the tenth argument (undefined when absent): a peek list or an RX filter
};

// Parses and checks a merged call's arguments (`handle` in [0, handleMax]), copies the buffer ends,
// checks each buffer's shape (1..IOV_MAX entries, in order, inside the table) and translates every
// entry (Translate). False with a JS exception pending on a bad argument or entry. When frames or
// buffers is 0 nothing is translated: the status word says FRAMES or NO_ROOM, and the call reads nothing.
bool PrepareMerged(napi_env env, napi_callback_info cbinfo, const char* usage, double handleMax, Pins& pins, Merged* m);

// Status word values of the merged calls (MERGED_STOP in native/batch.ts).
enum MergedStop : uint32_t { kStopFrames = 0, kStopEmpty = 1, kStopNoRoom = 2, kStopPieces = 3, kStopPeek = 4, kStopError = 5 };
// Or'ed into the status word by uringReadvMerged (IovecTable.stagedNext): the ring reads the next call's
// frames through its stage, one READV per frame whatever `need` spans, so room for one frame is enough.
constexpr uint32_t kStatusStaged = 0x100;
// Or'ed in by uringReadvMerged (IovecTable.stashed): after the call the ring's stash holds frames it read
// and could not place, so the next read of the queue must be a merged call, which places them first.
constexpr uint32_t kStatusStashed = 0x200;

// Copies up to `len` bytes from offset `at` of the stream the iovecs describe; returns the bytes copied.
uint32_t GatherBytes(const struct iovec* iov, uint32_t n, uint64_t at, uint8_t* out, uint32_t len);

// The whole RX filter (device/rx-filter.ts RxFilter, encoded by RxFilterSpec in native/batch.ts):
//   [0] flags  [1] unicast count  [2] multicast count  [3] 0  [4..6) hdrLen (LE)  [6..8) 0
//   [8..14) the device's MAC  [14..16) 0  [16..528) VLAN bitmap (bit v of byte v/8: VLAN id v)
//   [528..912) 64 unicast MACs  [912..1296) 64 multicast MACs
struct RxFilterSpec {
  static constexpr uint32_t kBytes = 1296;
  static constexpr uint32_t kMaxMacs = 64;
  uint8_t flags = 0;
  uint32_t uniCount = 0;
  uint32_t multiCount = 0;
  uint32_t hdrLen = 0;
  uint8_t mac[6] = {};
  uint8_t vlans[512] = {};
  uint8_t uni[kMaxMacs * 6] = {};
  uint8_t multi[kMaxMacs * 6] = {};
};

// Reads an RxFilterSpec argument: `present` false for undefined or null (every frame passes). False
// with a JS exception pending when it is neither that nor a well-formed spec.
bool ParseRxFilter(napi_env env, napi_value v, RxFilterSpec* out, bool* present);

// The filter's verdict on a frame of `len` bytes (virtio header not included) whose first bytes are
// eth[0, have): the same rules as RxFilter.accept (device/rx-filter.ts).
bool RxFilterAccepts(const RxFilterSpec& f, const uint8_t* eth, uint32_t have, int64_t len);

}  // namespace lgnet
