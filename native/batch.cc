// batch.cc: batched frame I/O, one N-API call per burst (DESIGN.md, "Batching across the native
// boundary"). JS fills an iovec table (native/iovec.ts):
//
//   entries  u32 × 4 per iovec: [mappingId, offsetLo, offsetHi, length]
//   frameEnd u32 per frame:     index of the first entry after the frame (frame 0 starts at entry 0)
//   bytes    i32 per frame:     filled here with the byte count of each writev/readv
//
// All three are views of one buffer (IovecTable.words), so one call queries one typed array.
//
// Every entry is checked against the registry under one lock before any syscall: a bad entry fails
// the whole batch with NativeError(EFAULT or EINVAL, 'iovec') and nothing is written or read. The
// mappings used are pinned (registry.h) for the duration of the syscalls, which run without the lock.
// Then one writev/readv per frame: EINTR retries, EAGAIN ends the batch, another error ends it too
// (thrown only when it hits the first frame).
#include "common.h"
#include "registry.h"

#include <limits.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

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

// Reads an integral number argument in [lo, hi] without node-addon-api wrappers (hot path).
bool ArgInt(napi_env env, napi_value v, const char* what, double lo, double hi, int64_t* out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) {
    napi_throw_type_error(env, nullptr, (std::string(what) + " must be a number").c_str());
    return false;
  }
  if (!IsInteger(d) || d < lo || d > hi) {
    napi_throw_range_error(env, nullptr, (std::string(what) + " out of range").c_str());
    return false;
  }
  *out = (int64_t)d;
  return true;
}

// writevBatch/readvBatch(fd, words: Uint32Array, maxEntries, maxFrames, frames)
// `words` is the IovecTable's one buffer: entries (maxEntries × 4), then frameEnd (maxFrames), then
// bytes (maxFrames, as int32). One typed-array query per call: napi_get_typedarray_info is the most
// expensive part of crossing (measured: ~3× a whole nop call each), so the three arrays share it.
napi_value BatchIo(napi_env env, napi_callback_info cbinfo, bool write) {
  const char* syscall = write ? "writev" : "readv";
  size_t argc = 5;
  napi_value argv[5];
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  if (napi_get_cb_info(env, cbinfo, &argc, argv, nullptr, nullptr) != napi_ok) return undefined;
  if (argc < 5) {
    napi_throw_type_error(env, nullptr, "batch I/O takes (fd, words, maxEntries, maxFrames, frames)");
    return undefined;
  }
  int64_t fd64, maxEntries, maxFrames, frames;
  if (!ArgInt(env, argv[0], "fd", 0, INT32_MAX, &fd64) ||
      !ArgInt(env, argv[2], "maxEntries", 0, UINT32_MAX, &maxEntries) ||
      !ArgInt(env, argv[3], "maxFrames", 0, UINT32_MAX, &maxFrames) ||
      !ArgInt(env, argv[4], "frames", 0, UINT32_MAX, &frames))
    return undefined;
  const int fd = (int)fd64;
  bool isTyped = false;
  napi_is_typedarray(env, argv[1], &isTyped);
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  if (!isTyped || napi_get_typedarray_info(env, argv[1], &type, &length, &data, nullptr, nullptr) != napi_ok ||
      type != napi_uint32_array) {
    napi_throw_type_error(env, nullptr, "words must be a Uint32Array (IovecTable.words)");
    return undefined;
  }
  if ((uint64_t)maxEntries * kWords + 2 * (uint64_t)maxFrames > length) {
    napi_throw_range_error(env, nullptr, "maxEntries/maxFrames exceed the words array");
    return undefined;
  }
  if (frames > maxFrames) {
    napi_throw_range_error(env, nullptr, "frames exceeds maxFrames");
    return undefined;
  }
  napi_value result;
  if (frames == 0) {
    napi_create_uint32(env, 0, &result);
    return result;
  }
  Napi::Env cenv(env);

  const uint32_t* entries = static_cast<const uint32_t*>(data);
  const uint32_t* frameEnd = entries + maxEntries * kWords;  // read once, into ends
  int32_t* bytes = reinterpret_cast<int32_t*>(const_cast<uint32_t*>(frameEnd + maxFrames));
  const size_t nEntries = (size_t)maxEntries;

  // Frame shape: non-empty, at most IOV_MAX entries, inside the entries array, at most 2^31-1 bytes.
  if (tEnds.size() < (size_t)frames) tEnds.resize((size_t)frames);
  uint32_t* ends = tEnds.data();
  uint32_t start = 0;
  for (int64_t f = 0; f < frames; f++) {
    uint32_t end = ends[f] = frameEnd[f];
    if (end <= start || end > nEntries || end - start > IOV_MAX) {
      ThrowNativeError(cenv, EINVAL, "iovec",
                       "frame " + std::to_string(f) + " spans entries [" + std::to_string(start) + ", " +
                           std::to_string(end) + "): each frame needs 1.." + std::to_string(IOV_MAX) +
                           " entries within the " + std::to_string(nEntries) + " in the table");
      return undefined;
    }
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
      uint32_t len = w[3];
      if (id != lastId || last == nullptr) {
        last = FindMappingLocked(id);
        lastId = id;
        if (last == nullptr) {
          ThrowNativeError(cenv, EFAULT, "iovec",
                           "entry " + std::to_string(e) + " names mapping id " + std::to_string(id) +
                               ", which is not mapped (never created or already released)");
          return undefined;
        }
        pins.Add(last);
      }
      if (offset > last->size || len > last->size - offset) {
        ThrowNativeError(cenv, EFAULT, "iovec",
                         "entry " + std::to_string(e) + " [" + std::to_string(offset) + ", +" + std::to_string(len) +
                             ") lies outside mapping " + std::to_string(id) + " of " + std::to_string(last->size) + " bytes");
        return undefined;
      }
      frameBytes += len;
      if (frameBytes > INT32_MAX) {
        ThrowNativeError(cenv, EINVAL, "iovec", "frame " + std::to_string(frame) + " is longer than 2^31-1 bytes");
        return undefined;
      }
      iov[e].iov_base = last->addr + offset;
      iov[e].iov_len = len;
    }
  }

  uint32_t done = 0;
  start = 0;
  for (; done < (uint32_t)frames; done++) {
    uint32_t end = ends[done];
    ssize_t n;
    // syscall() rather than glibc's writev/readv: those are pthread cancellation points, which costs
    // an enable/disable pair per call in a multi-threaded process (and Node never cancels threads).
    do n = ::syscall(write ? SYS_writev : SYS_readv, fd, iov + start, (int)(end - start));
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN || done > 0) break;
      ThrowNativeError(cenv, errno, syscall, "fd " + std::to_string(fd) + ", frame 0 of a batch of " + std::to_string(frames));
      return undefined;
    }
    bytes[done] = (int32_t)n;
    start = end;
  }
  napi_create_uint32(env, done, &result);
  return result;
}

napi_value WritevBatch(napi_env env, napi_callback_info info) { return BatchIo(env, info, true); }
napi_value ReadvBatch(napi_env env, napi_callback_info info) { return BatchIo(env, info, false); }

Napi::Function Raw(Napi::Env env, napi_callback cb, const char* name) {
  napi_value fn;
  napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, nullptr, &fn);
  return Napi::Function(env, fn);
}

}  // namespace

void RegisterBatch(Napi::Env env, Napi::Object exports) {
  exports.Set("writevBatch", Raw(env, WritevBatch, "writevBatch"));
  exports.Set("readvBatch", Raw(env, ReadvBatch, "readvBatch"));
}

}  // namespace lgnet
