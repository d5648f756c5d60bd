// batch.cc: batched frame I/O, one N-API call per burst (DESIGN.md, "Batching across the native
// boundary"). JS fills an iovec table (native/iovec.ts):
//
//   entries  u32 × 4 per iovec: [mappingId, offsetLo, offsetHi, length]
//   frameEnd u32 per frame:     index of the first entry after the frame (frame 0 starts at entry 0)
//   bytes    i32 per frame:     filled here with the byte count of each writev/readv
//
// Every entry is checked against the registry under one lock before any syscall: a bad entry fails
// the whole batch with NativeError(EFAULT or EINVAL, 'iovec') and nothing is written or read. The
// mappings used are pinned (registry.h) for the duration of the syscalls, which run without the lock.
// Then one writev/readv per frame: EINTR retries, EAGAIN ends the batch, another error ends it too
// (thrown only when it hits the first frame).
#include "common.h"
#include "registry.h"

#include <limits.h>
#include <sys/uio.h>

#include <vector>

namespace lgnet {
namespace {

constexpr uint32_t kWords = 4;  // IOVEC_WORDS in native/iovec.ts
constexpr uint32_t kInlinePins = 16;

// The mappings one batch holds references to: a few inline, more on the heap (rare: a batch that
// touches more than kInlinePins distinct regions).
struct Pins {
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
  ~Pins() {
    for (uint32_t i = 0; i < count; i++) MappingUnref(inlinePins[i]);
    for (Mapping* e : extra) MappingUnref(e);
  }
};

// Per-thread iovec scratch, grown to the largest batch seen (no allocation in steady state).
// Frame ends are copied once, so a table in shared memory changed meanwhile cannot move a frame
// outside what was checked.
thread_local std::vector<struct iovec> tIov;
thread_local std::vector<uint32_t> tEnds;

Napi::Value BatchIo(const Napi::CallbackInfo& info, bool write) {
  Napi::Env env = info.Env();
  const char* syscall = write ? "writev" : "readv";
  REQUIRE_ARGUMENT_FD(0, fd)
  REQUIRE_ARGUMENT_TYPED(1, entriesArr, uint32_t, napi_uint32_array, "entries")
  REQUIRE_ARGUMENT_TYPED(2, frameEndArr, uint32_t, napi_uint32_array, "frameEnd")
  REQUIRE_ARGUMENT_TYPED(3, bytesArr, int32_t, napi_int32_array, "bytes")
  REQUIRE_ARGUMENT_INTEGER(4, frames, "frames", 0, UINT32_MAX)
  if ((size_t)frames > frameEndArr.ElementLength() || (size_t)frames > bytesArr.ElementLength())
    LGNET_THROW_RANGE("frames exceeds the frameEnd or bytes array");
  if (frames == 0) return Napi::Number::New(env, 0);

  const uint32_t* entries = entriesArr.Data();
  const uint32_t* frameEnd = frameEndArr.Data();  // read once, into ends
  int32_t* bytes = bytesArr.Data();
  const size_t nEntries = entriesArr.ElementLength() / kWords;

  // Frame shape: non-empty, at most IOV_MAX entries, inside the entries array, at most 2^31-1 bytes.
  if (tEnds.size() < (size_t)frames) tEnds.resize((size_t)frames);
  uint32_t* ends = tEnds.data();
  uint32_t start = 0;
  for (int64_t f = 0; f < frames; f++) {
    uint32_t end = ends[f] = frameEnd[f];
    if (end <= start || end > nEntries || end - start > IOV_MAX)
      return NativeFail(env, EINVAL, "iovec",
                        "frame " + std::to_string(f) + " spans entries [" + std::to_string(start) + ", " +
                            std::to_string(end) + "): each frame needs 1.." + std::to_string(IOV_MAX) +
                            " entries within the " + std::to_string(nEntries) + " in the table");
    start = end;
  }
  const uint32_t total = start;
  if (tIov.size() < total) tIov.resize(total);
  struct iovec* iov = tIov.data();

  Pins pins;
  {
    std::lock_guard<std::mutex> lock(RegistryMutex());
    uint32_t lastId = 0;
    Mapping* last = nullptr;
    uint32_t frame = 0;
    uint64_t frameBytes = 0;
    for (uint32_t e = 0; e < total; e++) {
      if (e == ends[frame]) {
        frame++;
        frameBytes = 0;
      }
      const uint32_t* w = entries + (size_t)e * kWords;
      uint32_t id = w[0];
      uint64_t offset = (uint64_t)w[1] | ((uint64_t)w[2] << 32);
      uint32_t length = w[3];
      if (id != lastId || last == nullptr) {
        last = FindMappingLocked(id);
        lastId = id;
        if (last == nullptr)
          return NativeFail(env, EFAULT, "iovec",
                            "entry " + std::to_string(e) + " names mapping id " + std::to_string(id) +
                                ", which is not mapped (never created or already released)");
        pins.Add(last);
      }
      if (offset > last->size || length > last->size - offset)
        return NativeFail(env, EFAULT, "iovec",
                          "entry " + std::to_string(e) + " [" + std::to_string(offset) + ", +" + std::to_string(length) +
                              ") lies outside mapping " + std::to_string(id) + " of " + std::to_string(last->size) + " bytes");
      frameBytes += length;
      if (frameBytes > INT32_MAX)
        return NativeFail(env, EINVAL, "iovec", "frame " + std::to_string(frame) + " is longer than 2^31-1 bytes");
      iov[e].iov_base = last->addr + offset;
      iov[e].iov_len = length;
    }
  }

  uint32_t done = 0;
  start = 0;
  for (; done < (uint32_t)frames; done++) {
    uint32_t end = ends[done];
    ssize_t n;
    do n = write ? writev(fd, iov + start, (int)(end - start)) : readv(fd, iov + start, (int)(end - start));
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN || done > 0) break;
      return NativeFail(env, errno, syscall, "fd " + std::to_string(fd) + ", frame 0 of a batch of " + std::to_string(frames));
    }
    bytes[done] = (int32_t)n;
    start = end;
  }
  return Napi::Number::New(env, done);
}

Napi::Value WritevBatch(const Napi::CallbackInfo& info) { return BatchIo(info, true); }
Napi::Value ReadvBatch(const Napi::CallbackInfo& info) { return BatchIo(info, false); }

}  // namespace

void RegisterBatch(Napi::Env env, Napi::Object exports) {
  exports.Set("writevBatch", Napi::Function::New(env, WritevBatch, "writevBatch"));
  exports.Set("readvBatch", Napi::Function::New(env, ReadvBatch, "readvBatch"));
}

}  // namespace lgnet
