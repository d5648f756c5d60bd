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
#include "batch.h"

#include <limits.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstring>
#include <vector>

namespace lgnet {
namespace {

// Per-thread iovec scratch, grown to the largest batch seen (no allocation in steady state).
// Frame ends are copied once, so a table in shared memory changed meanwhile cannot move a frame
// outside what was checked.
thread_local std::vector<struct iovec> tIov;
thread_local std::vector<uint32_t> tEnds;
// Room of each buffer of a merged call.
thread_local std::vector<uint32_t> tRoom;
constexpr uint32_t kEthHlen = 14;  // an Ethernet header: two MACs and the EtherType

}  // namespace

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

// Reads a typed array argument of `want` type; false (with a TypeError saying `msg` pending) otherwise.
static bool ArgTyped(napi_env env, napi_value v, napi_typedarray_type want, const char* msg, void** data, size_t* length) {
  bool isTyped = false;
  napi_is_typedarray(env, v, &isTyped);
  napi_typedarray_type type;
  if (!isTyped || napi_get_typedarray_info(env, v, &type, length, data, nullptr, nullptr) != napi_ok || type != want) {
    napi_throw_type_error(env, nullptr, msg);
    return false;
  }
  return true;
}

uint8_t gSpill[8];

// Translates `units` consecutive units of entries, the first starting at entry `base` and unit u
// ending before entry ends[u], into iov (iov[0] is entry `base`), checking each entry against its
// mapping under one registry lock and pinning the mappings it names. A unit (a frame, or a buffer of
// readvMerged) holds at most 2^31-1 bytes; its byte count goes to room[u] when room is given. Throws
// NativeError(EFAULT/EINVAL, 'iovec') and returns false on a bad entry, before any syscall.
bool Translate(Napi::Env cenv, const uint32_t* entries, uint32_t base, const uint32_t* ends, uint32_t units,
               struct iovec* iov, Pins& pins, uint32_t* room, bool spill) {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  uint32_t lastId = 0;
  Mapping* map = nullptr;
  uint32_t e = base;
  for (uint32_t u = 0; u < units; u++) {
    const size_t at = spill ? u : 0;  // entry e goes to iov[e - base + at]
    uint64_t unitBytes = 0;
    for (; e < ends[u]; e++) {
      const uint32_t* w = entries + (size_t)e * kIovecWords;
      uint32_t id = w[0];
      uint64_t offset = (uint64_t)w[1] | ((uint64_t)w[2] << 32);
      uint32_t len = w[3];
      if (id != lastId || map == nullptr) {
        map = FindMappingLocked(id);
        lastId = id;
        if (map == nullptr) {
          ThrowNativeError(cenv, EFAULT, "iovec",
                           "entry " + std::to_string(e) + " names mapping id " + std::to_string(id) +
                               ", which is not mapped (never created or already released)");
          return false;
        }
        pins.Add(map);
      }
      if (offset > map->size || len > map->size - offset) {
        ThrowNativeError(cenv, EFAULT, "iovec",
                         "entry " + std::to_string(e) + " [" + std::to_string(offset) + ", +" + std::to_string(len) +
                             ") lies outside mapping " + std::to_string(id) + " of " + std::to_string(map->size) + " bytes");
        return false;
      }
      unitBytes += len;
      if (unitBytes > INT32_MAX) {
        ThrowNativeError(cenv, EINVAL, "iovec", "frame or buffer " + std::to_string(u) + " is longer than 2^31-1 bytes");
        return false;
      }
      iov[e - base + at].iov_base = map->addr + offset;
      iov[e - base + at].iov_len = len;
    }
    if (spill) iov[e - base + at] = {gSpill, 1};
    if (room != nullptr) room[u] = (uint32_t)unitBytes;
  }
  return true;
}

// (handle, words, maxEntries, maxFrames, frames): `words` is the IovecTable's one buffer: entries
// (maxEntries × 4), then frameEnd (maxFrames), then bytes (maxFrames, as int32). One typed-array query
// per call: napi_get_typedarray_info is the most expensive part of crossing (measured: ~3× a whole nop
// call each), so the three arrays share it.
bool PrepareBatch(napi_env env, napi_callback_info cbinfo, const char* usage, double handleMax, bool spill, Pins& pins, Batch* b) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, cbinfo, &argc, argv, nullptr, nullptr) != napi_ok) return false;
  if (argc < 5) {
    napi_throw_type_error(env, nullptr, usage);
    return false;
  }
  int64_t handle, maxEntries, maxFrames, frames;
  if (!ArgInt(env, argv[0], "fd", 0, handleMax, &handle) ||
      !ArgInt(env, argv[2], "maxEntries", 0, UINT32_MAX, &maxEntries) ||
      !ArgInt(env, argv[3], "maxFrames", 0, UINT32_MAX, &maxFrames) ||
      !ArgInt(env, argv[4], "frames", 0, UINT32_MAX, &frames))
    return false;
  size_t length = 0;
  void* data = nullptr;
  if (!ArgTyped(env, argv[1], napi_uint32_array, "words must be a Uint32Array (IovecTable.words)", &data, &length)) return false;
  if ((uint64_t)maxEntries * kIovecWords + 2 * (uint64_t)maxFrames > length) {
    napi_throw_range_error(env, nullptr, "maxEntries/maxFrames exceed the words array");
    return false;
  }
  if (frames > maxFrames) {
    napi_throw_range_error(env, nullptr, "frames exceeds maxFrames");
    return false;
  }
  const uint32_t* entries = static_cast<const uint32_t*>(data);
  const uint32_t* frameEnd = entries + maxEntries * kIovecWords;  // read once, into ends
  b->handle = handle;
  b->frames = (uint32_t)frames;
  b->bytes = reinterpret_cast<int32_t*>(const_cast<uint32_t*>(frameEnd + maxFrames));
  b->written = (uint64_t)maxEntries * kIovecWords + 3 * (uint64_t)maxFrames <= length ? const_cast<uint32_t*>(frameEnd) + 2 * maxFrames : nullptr;
  b->status = (uint64_t)maxEntries * kIovecWords + 3 * (uint64_t)maxFrames + 1 <= length ? const_cast<uint32_t*>(frameEnd) + 3 * maxFrames : nullptr;
  b->spill = spill;
  if (frames == 0) return true;
  Napi::Env cenv(env);
  const size_t nEntries = (size_t)maxEntries;

  // Frame shape: non-empty, at most IOV_MAX entries (one fewer with a spill iovec), inside the entries
  // array, at most 2^31-1 bytes.
  const uint32_t maxIov = spill ? IOV_MAX - 1 : IOV_MAX;
  if (tEnds.size() < (size_t)frames) tEnds.resize((size_t)frames);
  uint32_t* ends = tEnds.data();
  uint32_t start = 0;
  for (int64_t f = 0; f < frames; f++) {
    uint32_t end = ends[f] = frameEnd[f];
    if (end <= start || end > nEntries || end - start > maxIov) {
      ThrowNativeError(cenv, EINVAL, "iovec",
                       "frame " + std::to_string(f) + " spans entries [" + std::to_string(start) + ", " +
                           std::to_string(end) + "): each frame needs 1.." + std::to_string(maxIov) +
                           " entries within the " + std::to_string(nEntries) + " in the table");
      return false;
    }
    start = end;
  }
  const size_t total = (size_t)start + (spill ? (size_t)frames : 0);
  if (tIov.size() < total) tIov.resize(total);
  b->iov = tIov.data();
  if (!Translate(cenv, entries, 0, ends, (uint32_t)frames, b->iov, pins, nullptr, spill)) return false;
  // Frame f's spill iovec sits after it: its iovecs end f + 1 places further on.
  if (spill)
    for (uint32_t f = 0; f < (uint32_t)frames; f++) ends[f] += f + 1;
  b->ends = ends;
  return true;
}

// (handle, words, maxEntries, maxFrames, first, buffers, frames, need, maxLen, extra?): see batch.h.
bool PrepareMerged(napi_env env, napi_callback_info cbinfo, const char* usage, double handleMax, Pins& pins, Merged* m) {
  size_t argc = 10;
  napi_value argv[10];
  if (napi_get_cb_info(env, cbinfo, &argc, argv, nullptr, nullptr) != napi_ok) return false;
  if (argc < 9) {
    napi_throw_type_error(env, nullptr, usage);
    return false;
  }
  if (argc > 9) m->extra = argv[9];
  else napi_get_undefined(env, &m->extra);
  int64_t handle, maxEntries, maxFrames, first, buffers, frames, need, maxLen;
  if (!ArgInt(env, argv[0], "fd", 0, handleMax, &handle) ||
      !ArgInt(env, argv[2], "maxEntries", 0, UINT32_MAX, &maxEntries) ||
      !ArgInt(env, argv[3], "maxFrames", 0, UINT32_MAX, &maxFrames) ||
      !ArgInt(env, argv[4], "first", 0, UINT32_MAX, &first) ||
      !ArgInt(env, argv[5], "buffers", 0, UINT32_MAX, &buffers) ||
      !ArgInt(env, argv[6], "frames", 0, UINT32_MAX, &frames) ||
      !ArgInt(env, argv[7], "need", 1, INT32_MAX, &need) ||
      !ArgInt(env, argv[8], "maxLen", 1, INT32_MAX, &maxLen))
    return false;
  size_t length = 0;
  void* data = nullptr;
  if (!ArgTyped(env, argv[1], napi_uint32_array, "words must be a Uint32Array (IovecTable.words)", &data, &length)) return false;
  if ((uint64_t)maxEntries * kIovecWords + 3 * (uint64_t)maxFrames + 1 > length) {
    napi_throw_range_error(env, nullptr, "maxEntries/maxFrames exceed the words array");
    return false;
  }
  if (first + buffers > maxFrames || frames > maxFrames) {
    napi_throw_range_error(env, nullptr, "first + buffers and frames must each be at most maxFrames");
    return false;
  }
  uint32_t* words = static_cast<uint32_t*>(data);
  const uint32_t* entries = words;
  const uint32_t* bufEnd = entries + maxEntries * kIovecWords;
  m->handle = handle;
  m->buffers = (uint32_t)buffers;
  m->frames = (uint32_t)frames;
  m->need = (uint64_t)need;
  m->maxLen = maxLen;
  m->bytes = reinterpret_cast<int32_t*>(words + maxEntries * kIovecWords + maxFrames);
  m->used = words + maxEntries * kIovecWords + 2 * maxFrames;
  m->status = words + maxEntries * kIovecWords + 3 * maxFrames;
  if (frames == 0 || buffers == 0) {
    *m->status = frames == 0 ? kStopFrames : kStopNoRoom;
    m->buffers = m->frames = 0;
    return true;
  }
  Napi::Env cenv(env);
  const size_t nEntries = (size_t)maxEntries;
  const uint32_t nb = (uint32_t)buffers;
  const uint32_t f0 = (uint32_t)first;

  // Buffer shape, on a copy of the ends (a table changed meanwhile cannot move a buffer outside what
  // was checked): each buffer 1..IOV_MAX entries, in order, inside the entries array.
  if (tEnds.size() < (size_t)nb + 1) tEnds.resize((size_t)nb + 1);
  uint32_t* ends = tEnds.data();  // ends[0] = start of buffer `first`; ends[b + 1] = end of buffer first + b
  ends[0] = f0 == 0 ? 0 : bufEnd[f0 - 1];
  for (uint32_t b = 0; b < nb; b++) {
    uint32_t start = ends[b];
    uint32_t end = ends[b + 1] = bufEnd[f0 + b];
    if (end <= start || end > nEntries || end - start > IOV_MAX) {
      ThrowNativeError(cenv, EINVAL, "iovec",
                       "buffer " + std::to_string(f0 + b) + " spans entries [" + std::to_string(start) + ", " +
                           std::to_string(end) + "): each buffer needs 1.." + std::to_string(IOV_MAX) +
                           " entries within the " + std::to_string(nEntries) + " in the table");
      return false;
    }
  }
  const uint32_t base = ends[0];
  const uint32_t total = ends[nb] - base;
  if (tIov.size() < (size_t)total + 1) tIov.resize((size_t)total + 1);  // + the spill iovec
  if (tRoom.size() < nb) tRoom.resize(nb);
  if (!Translate(cenv, entries, base, ends + 1, nb, tIov.data(), pins, tRoom.data())) return false;
  m->ends = ends;
  m->base = base;
  m->iov = tIov.data();
  m->room = tRoom.data();
  return true;
}

uint32_t GatherBytes(const struct iovec* iov, uint32_t n, uint64_t at, uint8_t* out, uint32_t len) {
  uint32_t got = 0;
  for (uint32_t i = 0; i < n && got < len; i++) {
    uint64_t l = iov[i].iov_len;
    if (at >= l) {
      at -= l;
      continue;
    }
    uint64_t take = l - at;
    if (take > len - got) take = len - got;
    memcpy(out + got, static_cast<const uint8_t*>(iov[i].iov_base) + at, take);
    got += (uint32_t)take;
    at = 0;
  }
  return got;
}

// RxFilterSpec flags (RX_FILTER_FLAG in native/batch.ts).
constexpr uint8_t kFilterPromisc = 1, kFilterAllmulti = 2, kFilterAlluni = 4, kFilterNomulti = 8, kFilterNouni = 16,
                  kFilterNobcast = 32, kFilterVlan = 64;

bool ParseRxFilter(napi_env env, napi_value v, RxFilterSpec* out, bool* present) {
  napi_valuetype vt;
  napi_typeof(env, v, &vt);
  *present = false;
  if (vt == napi_undefined || vt == napi_null) return true;
  size_t length = 0;
  void* data = nullptr;
  const char* what = "filter must be a Uint8Array of 1296 bytes (RxFilterSpec.bytes)";
  if (!ArgTyped(env, v, napi_uint8_array, what, &data, &length)) return false;
  if (length < RxFilterSpec::kBytes) {
    napi_throw_type_error(env, nullptr, what);
    return false;
  }
  const uint8_t* b = static_cast<const uint8_t*>(data);
  if (b[1] > RxFilterSpec::kMaxMacs || b[2] > RxFilterSpec::kMaxMacs) {
    napi_throw_range_error(env, nullptr, "filter: more than 64 unicast or multicast MACs");
    return false;
  }
  out->flags = b[0];
  out->uniCount = b[1];
  out->multiCount = b[2];
  out->hdrLen = (uint32_t)b[4] | ((uint32_t)b[5] << 8);
  memcpy(out->mac, b + 8, 6);
  memcpy(out->vlans, b + 16, sizeof out->vlans);
  memcpy(out->uni, b + 528, (size_t)out->uniCount * 6);
  memcpy(out->multi, b + 912, (size_t)out->multiCount * 6);
  *present = true;
  return true;
}

bool RxFilterAccepts(const RxFilterSpec& f, const uint8_t* eth, uint32_t have, int64_t len) {
  if (len < (int64_t)kEthHlen || have < kEthHlen) return false;
  if ((f.flags & kFilterVlan) && len >= 16 && have >= 16 && eth[12] == 0x81 && eth[13] == 0x00) {
    const uint32_t vid = (((uint32_t)eth[14] << 8) | eth[15]) & 0x0fff;
    if (!(f.vlans[vid >> 3] & (1u << (vid & 7)))) return false;
  }
  if (f.flags & kFilterPromisc) return true;
  if (eth[0] & 1) {
    if ((eth[0] & eth[1] & eth[2] & eth[3] & eth[4] & eth[5]) == 0xff) return !(f.flags & kFilterNobcast);
    if (f.flags & kFilterNomulti) return false;
    if (f.flags & kFilterAllmulti) return true;
    for (uint32_t i = 0; i < f.multiCount; i++)
      if (memcmp(eth, f.multi + i * 6, 6) == 0) return true;
    return false;
  }
  if (f.flags & kFilterNouni) return false;
  if (f.flags & kFilterAlluni) return true;
  if (memcmp(eth, f.mac, 6) == 0) return true;
  for (uint32_t i = 0; i < f.uniCount; i++)
    if (memcmp(eth, f.uni + i * 6, 6) == 0) return true;
  return false;
}

namespace {

// writevBatch/readvBatch(fd, words, maxEntries, maxFrames, frames): one writev/readv per frame.
// readv: each frame's buffers are followed by the spill byte, so a frame longer than them reads as
// room + 1 (the caller drops it, never delivers it cut short); written[f] gets the bytes that went
// into frame f's buffers (a failed readv may have copied part of a frame: all of them). A readv that
// fails past frame 0 ends the batch there and is reported in the status word (SetReadFailures): the
// tap dropped the frame it was copying.
napi_value BatchIo(napi_env env, napi_callback_info cbinfo, bool write) {
  const char* syscall = write ? "writev" : "readv";
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  Pins pins;
  Batch b;
  if (!PrepareBatch(env, cbinfo, "batch I/O takes (fd, words, maxEntries, maxFrames, frames)", INT32_MAX, !write, pins, &b)) return undefined;
  napi_value result;
  const int fd = (int)b.handle;
  if (!write && b.written != nullptr && b.frames > 0) memset(b.written, 0, (size_t)b.frames * sizeof(uint32_t));
  uint32_t done = 0;
  uint32_t start = 0;
  int failed = 0;  // errno of a read that failed past frame 0 (SetReadFailures)
  for (; done < b.frames; done++) {
    uint32_t end = b.ends[done];
    ssize_t n;
    // syscall() rather than glibc's writev/readv: those are pthread cancellation points, which costs
    // an enable/disable pair per call in a multi-threaded process (and Node never cancels threads).
    do n = ::syscall(write ? SYS_writev : SYS_readv, fd, b.iov + start, (int)(end - start));
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      int e = errno;
      if (!write && b.written != nullptr && e != EAGAIN) b.written[done] = (uint32_t)FrameRoom(b, done);
      if (e != EAGAIN && done > 0) failed = e;
      if (e == EAGAIN || done > 0) break;
      ThrowNativeError(Napi::Env(env), e, syscall, "fd " + std::to_string(fd) + ", frame 0 of a batch of " + std::to_string(b.frames));
      return undefined;
    }
    b.bytes[done] = (int32_t)n;
    if (!write && b.written != nullptr) {
      size_t room = FrameRoom(b, done);
      b.written[done] = (uint32_t)((size_t)n < room ? (size_t)n : room);
    }
    start = end;
  }
  if (!write) SetReadFailures(b, failed != 0 ? 1 : 0, failed);
  napi_create_uint32(env, done, &result);
  return result;
}

// ---- readvMerged: MRG_RXBUF receive, one call per burst (virtio 1.2 §5.1.6.4)
//
// The table's frames are guest buffers (one RX chain's writable part each), not frames. Frame after
// frame is read into whole buffers, from where the previous frame ended:
//
//   buffers   [ b0 ][ b1 ][ b2 ][ b3 ][ b4 ] …      readv #0 over b0 b1 (room ≥ need), frame 0 took b0
//   frames    f0: len 1400, used 1               readv #1 over b1 b2, frame 1 took b1 b2
//             f1: len 2500, used 2               readv #2 over b3 b4 …
//
// Each readv is offered the fewest whole buffers whose room reaches `need` (with MRG_RXBUF the largest
// frame the guest may receive, so no frame it may get is truncated; without, 1: one buffer per frame).
// A frame longer than `maxLen` or than its room is recorded with used 0: its buffers take the next
// frame (the caller counts the drop and logs what it wrote). When the kernel truncated it, its length
// says only that it was longer than the room (room + 1). The call stops, leaving a reason in the status word, when `frames`
// are read (FRAMES), the fd has nothing (EMPTY), the buffers left cannot hold `need` (NO_ROOM), the
// next window would exceed IOV_MAX pieces (PIECES), a frame is one the peek list cannot vouch for
// (PEEK: it is the last one recorded), or readv failed after frame 0 (ERROR; on frame 0 it throws).
// The native side writes only through the iovecs it checked: the kernel fills them and nothing else.

// The peek list (native/batch.ts PeekList): [flags, count, hdrLen lo, hdrLen hi, count × 6-byte MAC].
constexpr uint8_t kPeekAnyDest = 1;    // every destination passes (promiscuous)
constexpr uint8_t kPeekStopTagged = 2;  // an 802.1Q-tagged frame stops the call (VLAN filtering)
constexpr uint32_t kPeekMaxMacs = 64;

struct Peek {
  uint8_t flags = 0;
  uint32_t count = 0;
  uint32_t hdrLen = 0;
  uint8_t macs[kPeekMaxMacs * 6];
};

// True when the peek list vouches for the frame of `n` bytes (header included) just read into iov:
// the caller's filter would accept it, so the call may go on past it.
bool PeekPasses(const Peek& p, const struct iovec* iov, uint32_t niov, int64_t n) {
  uint8_t eth[kEthHlen];
  if (n < (int64_t)(p.hdrLen + kEthHlen)) return false;
  if (GatherBytes(iov, niov, p.hdrLen, eth, kEthHlen) != kEthHlen) return false;
  if ((p.flags & kPeekStopTagged) && eth[12] == 0x81 && eth[13] == 0x00) return false;
  if (p.flags & kPeekAnyDest) return true;
  for (uint32_t i = 0; i < p.count; i++)
    if (memcmp(eth, p.macs + i * 6, 6) == 0) return true;
  return false;
}

// readvMerged(fd, words, maxEntries, maxFrames, first, buffers, frames, need, maxLen, peek?)
// words = IovecTable.words: entries, frameEnd (buffer ends), bytes (per frame read: its length),
// used (per frame read: buffers it took), status (one word: the MergedStop). Buffers first …
// first+buffers-1 are offered; frame i's results land in bytes[i], used[i]. Returns frames read.
napi_value ReadvMerged(napi_env env, napi_callback_info cbinfo) {
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  Pins pins;
  Merged m;
  if (!PrepareMerged(env, cbinfo, "readvMerged takes (fd, words, maxEntries, maxFrames, first, buffers, frames, need, maxLen, peek?)",
                     INT32_MAX, pins, &m))
    return undefined;
  // The peek list, copied once: optional (undefined or null: every frame passes).
  Peek peek;
  bool peeking = false;
  napi_valuetype vt;
  napi_typeof(env, m.extra, &vt);
  if (vt != napi_undefined && vt != napi_null) {
    void* pdata = nullptr;
    size_t plen = 0;
    if (!ArgTyped(env, m.extra, napi_uint8_array, "peek must be a Uint8Array of at least 4 bytes (PeekList.bytes)", &pdata, &plen))
      return undefined;
    if (plen < 4) {
      napi_throw_type_error(env, nullptr, "peek must be a Uint8Array of at least 4 bytes (PeekList.bytes)");
      return undefined;
    }
    const uint8_t* pb = static_cast<const uint8_t*>(pdata);
    peek.flags = pb[0];
    peek.count = pb[1];
    peek.hdrLen = (uint32_t)pb[2] | ((uint32_t)pb[3] << 8);
    if (peek.count > kPeekMaxMacs || 4 + (size_t)peek.count * 6 > plen) {
      napi_throw_range_error(env, nullptr, "peek: MAC count exceeds 64 or the array");
      return undefined;
    }
    memcpy(peek.macs, pb + 4, (size_t)peek.count * 6);
    peeking = true;
  }
  napi_value result;
  if (m.frames == 0 || m.buffers == 0) {
    napi_create_uint32(env, 0, &result);
    return result;
  }
  const int fd = (int)m.handle;
  const uint32_t nb = m.buffers;
  const uint32_t* ends = m.ends;
  const uint32_t* room = m.room;
  struct iovec* iov = m.iov;
  uint32_t done = 0;
  uint32_t cur = 0;  // the first buffer not taken by a frame
  uint32_t stop = kStopFrames;
  while (done < m.frames) {
    // The fewest whole buffers from cur that hold `need`.
    uint64_t have = 0;
    uint32_t k = cur;
    while (have < m.need && k < nb) have += room[k++];
    if (have < m.need) {
      stop = kStopNoRoom;
      break;
    }
    const uint32_t from = ends[cur] - m.base;
    const uint32_t niov = ends[k] - ends[cur];
    if (niov + 1 > IOV_MAX) {
      stop = kStopPieces;
      break;
    }
    // One spill byte after the window (gSpill): a byte in it means the frame was longer than the window.
    const struct iovec saved = iov[from + niov];
    iov[from + niov].iov_base = gSpill;
    iov[from + niov].iov_len = 1;
    ssize_t n;
    do n = ::syscall(SYS_readv, fd, iov + from, (int)niov + 1);
    while (n < 0 && errno == EINTR);
    iov[from + niov] = saved;
    if (n < 0) {
      if (errno == EAGAIN) {
        stop = kStopEmpty;
        break;
      }
      if (done > 0) {
        stop = kStopError;
        break;
      }
      ThrowNativeError(Napi::Env(env), errno, "readv", "fd " + std::to_string(fd) + ", frame 0 of a merged read");
      return undefined;
    }
    m.bytes[done] = n > INT32_MAX ? INT32_MAX : (int32_t)n;
    if (n == 0 || n > m.maxLen || (uint64_t)n > have) {
      m.used[done++] = 0;  // dropped by the caller; the same buffers take the next frame
      continue;
    }
    uint32_t u = 0;
    for (uint64_t acc = 0; acc < (uint64_t)n; u++) acc += room[cur + u];
    m.used[done++] = u;
    if (peeking && !PeekPasses(peek, iov + from, niov, n)) {
      cur += u;
      stop = kStopPeek;
      break;
    }
    cur += u;
  }
  *m.status = stop;
  napi_create_uint32(env, done, &result);
  return result;
}

// rxFilterAccepts(spec, frame, len): RxFilterAccepts on frame[0, min(len, 16)), for tests that hold
// it against RxFilter.accept.
napi_value RxFilterAcceptsJs(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 3;
  napi_value argv[3];
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  if (napi_get_cb_info(env, cbinfo, &argc, argv, nullptr, nullptr) != napi_ok) return undefined;
  if (argc < 3) {
    napi_throw_type_error(env, nullptr, "rxFilterAccepts takes (spec, frame, len)");
    return undefined;
  }
  RxFilterSpec spec;
  bool present = false;
  if (!ParseRxFilter(env, argv[0], &spec, &present)) return undefined;
  void* fdata = nullptr;
  size_t flen = 0;
  int64_t len;
  if (!ArgTyped(env, argv[1], napi_uint8_array, "frame must be a Uint8Array", &fdata, &flen) ||
      !ArgInt(env, argv[2], "len", 0, INT32_MAX, &len))
    return undefined;
  const uint32_t have = (uint32_t)(flen < 16 ? flen : 16);
  napi_value result;
  napi_get_boolean(env, !present || RxFilterAccepts(spec, static_cast<const uint8_t*>(fdata), have, len), &result);
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
  exports.Set("readvMerged", Raw(env, ReadvMerged, "readvMerged"));
  exports.Set("rxFilterAccepts", Raw(env, RxFilterAcceptsJs, "rxFilterAccepts"));
}

}  // namespace lgnet
