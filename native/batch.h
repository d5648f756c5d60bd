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
  bool spill;
};

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

}  // namespace lgnet
