// uring.cc: tap I/O through io_uring, one io_uring_enter per burst instead of one readv/writev per
// frame (DESIGN.md, "The syscall boundary and the jail"). Raw syscalls and <linux/io_uring.h>, no
// liburing: the addon is built from source where no prebuild fits, and liburing-dev is rarely there.
//
// A ring is made for one tap fd and one thread's use, and restricted before it can do anything:
//
//   io_uring_setup(R_DISABLED) ─▶ mmap SQ/CQ rings and SQEs ─▶ REGISTER_FILES [tap]
//     ─▶ REGISTER_RESTRICTIONS: SQE ops READV and WRITEV only, IOSQE_FIXED_FILE required and the only
//        flag allowed; of the register ops only UNREGISTER_FILES from now on ─▶ REGISTER_ENABLE_RINGS
//
// seccomp sees io_uring_enter but not the operations inside, so the restrictions are what keep a ring
// from opening, connecting or reading anything: the only file it can name is registered slot 0, the
// tap. `lgnet serve` makes its rings before the jail (io_uring_setup is denied there) and the jail
// then allows io_uring_enter on these rings' fds only (uringFds(); sandbox/seccomp-policy.ts).
//
// Rings live in a process-wide registry, by id, so a worker thread uses a ring the main thread made.
// A ring is used by one thread at a time (a busy flag refuses a second with EBUSY).
//
// Frames: the same IovecTable words as batch.cc, checked by the same code (PrepareBatch) against the
// mapping registry, so the kernel is only ever given addresses inside guest memory, and the mappings
// stay pinned until every operation of the burst has completed. Every SQE carries RWF_NOWAIT: the tap
// answers at once (a frame, or -EAGAIN) while io_uring_enter issues it, in SQE order. Without it,
// io_uring would park a READV on an empty tap until a frame came, and complete READVs out of order.
#include "batch.h"

#include <limits.h>
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

namespace lgnet {
namespace {

int SysSetup(unsigned entries, struct io_uring_params* p) { return (int)::syscall(__NR_io_uring_setup, entries, p); }
int SysEnter(int fd, unsigned submit, unsigned minComplete, unsigned flags) {
  return (int)::syscall(__NR_io_uring_enter, fd, submit, minComplete, flags, nullptr, 0);
}
int SysRegister(int fd, unsigned op, const void* arg, unsigned n) { return (int)::syscall(__NR_io_uring_register, fd, op, arg, n); }

// Most SQEs a ring takes at once; a larger burst goes in chunks.
constexpr unsigned kMaxEntries = 256;
// The RX window (below) starts here and never exceeds the ring.
constexpr unsigned kFirstWindow = 4;
// io_uring_enter retries (EINTR, EAGAIN, EBUSY) before a burst gives up on the ring.
constexpr unsigned kMaxEnterTries = 1u << 16;
// Merged RX stage (uringReadvMerged): READVs per round into it, the frame size above which a ring goes
// back to copy-down rounds and for how many calls, and the group size (in buffers) above which it stages.
constexpr unsigned kStageSlots = 64;
constexpr uint32_t kBigFrame = 4096;
constexpr unsigned kDirectCalls = 256;
constexpr uint32_t kStageGroup = 4;
// A stage slot's first bytes lie in one compact array (a small frame stays in a few pages and cache
// sets), the rest of the slot in a second, for the frames that need it.
constexpr size_t kStageHead = 2048;

struct Ring {
  int fd = -1;
  uint32_t id = 0;
  unsigned files = 0;
  bool enabled = false;
  void* sqMap = MAP_FAILED;
  size_t sqLen = 0;
  void* cqMap = MAP_FAILED;  // MAP_FAILED with IORING_FEAT_SINGLE_MMAP (the CQ shares sqMap)
  size_t cqLen = 0;
  struct io_uring_sqe* sqes = static_cast<struct io_uring_sqe*>(MAP_FAILED);
  size_t sqesLen = 0;
  unsigned* sqTail = nullptr;
  unsigned sqMask = 0;
  unsigned sqEntries = 0;
  unsigned* cqHead = nullptr;
  unsigned* cqTail = nullptr;
  unsigned cqMask = 0;
  struct io_uring_cqe* cqes = nullptr;
  std::atomic<bool> busy{false};
  // A burst gave up waiting on the ring: the kernel may still hold its operations, so the ring is
  // never used again (and the burst's mappings stay pinned).
  bool poisoned = false;
  // user_data of a burst's SQE i is (generation << 32 | i): a stray CQE can never pass for a current one.
  uint64_t generation = 0;
  // RX: how many READVs the next round offers (grows while rounds fill, shrinks to what arrived).
  unsigned window = kFirstWindow;
  // Merged RX through the stage (below): kStageSlots slots of stageSlot bytes, mapped on first use, as
  // kStageSlots heads of kStageHead bytes, then kStageSlots tails of stageSlot - kStageHead.
  uint8_t* stage = nullptr;
  size_t stageSlot = 0;
  // Frames read into the stage and not yet delivered, in order: slots stash[stashAt, stashAt + stashN).
  uint32_t stash[kStageSlots];
  uint32_t stageLen[kStageSlots];
  uint32_t stashAt = 0;
  uint32_t stashN = 0;
  // Calls left in copy-down rounds since a frame above kBigFrame came (it would be copied twice).
  unsigned directCalls = 0;

  ~Ring() {
    // A poisoned ring's READVs may still write into the stage: it is never unmapped then.
    if (stage != nullptr && !poisoned) munmap(stage, kStageSlots * stageSlot);
    // Drop the tap now: a closed ring releases its files later, from a kernel work queue, and until
    // then the tap stays attached (reopening its name fails with EBUSY for tens of ms). In the jail
    // io_uring_register is denied, and the release stays deferred.
    if (fd >= 0 && files > 0 && enabled) SysRegister(fd, IORING_UNREGISTER_FILES, nullptr, 0);
    if (sqes != MAP_FAILED) munmap(sqes, sqesLen);
    if (cqMap != MAP_FAILED) munmap(cqMap, cqLen);
    if (sqMap != MAP_FAILED) munmap(sqMap, sqLen);
    if (fd >= 0) ::close(fd);
  }
};

std::mutex gMu;
std::unordered_map<uint32_t, std::shared_ptr<Ring>> gRings;
uint32_t gNextId = 1;

std::shared_ptr<Ring> FindRing(uint32_t id) {
  std::lock_guard<std::mutex> lock(gMu);
  auto it = gRings.find(id);
  return it == gRings.end() ? nullptr : it->second;
}

// A call's ring, in use by this thread alone while the hold lives: a second thread's call on it is
// refused with EBUSY rather than sharing the submission queue.
class RingHold {
 public:
  RingHold() = default;
  RingHold(const RingHold&) = delete;
  RingHold& operator=(const RingHold&) = delete;
  ~RingHold() {
    if (claimed_) ring_->busy.store(false, std::memory_order_release);
  }
  // Finds ring `id` and claims it. False with a JS exception pending when it is not open (EBADF), gave
  // up on a burst earlier (EIO; unless `poisonedToo`) or is in use by another thread (EBUSY).
  bool Take(napi_env env, int64_t id, bool poisonedToo = false) {
    ring_ = FindRing((uint32_t)id);
    Napi::Env cenv(env);
    if (!ring_) {
      ThrowNativeError(cenv, EBADF, "io_uring", "ring " + std::to_string(id) + " is not open (never created, or closed)");
      return false;
    }
    if (ring_->poisoned && !poisonedToo) {
      ThrowNativeError(cenv, EIO, "io_uring", "ring " + std::to_string(id) + " gave up on a burst earlier and is out of use; close it");
      return false;
    }
    claimed_ = !ring_->busy.exchange(true, std::memory_order_acquire);
    if (!claimed_) ThrowNativeError(cenv, EBUSY, "io_uring", "ring " + std::to_string(id) + " is in use by another thread");
    return claimed_;
  }
  Ring* get() const { return ring_.get(); }

 private:
  std::shared_ptr<Ring> ring_;
  bool claimed_ = false;
};

// Writes SQE i of a burst at the ring's tail + i.
inline void PrepSqe(Ring* r, unsigned i, uint8_t op, uint8_t flags, int32_t fd, const void* addr, uint32_t len, uint32_t rwFlags) {
  struct io_uring_sqe* s = &r->sqes[(*r->sqTail + i) & r->sqMask];
  memset(s, 0, sizeof *s);
  s->opcode = op;
  s->flags = flags;
  s->fd = fd;
  s->addr = (uint64_t)(uintptr_t)addr;
  s->len = len;
  s->rw_flags = rwFlags;
  s->user_data = (r->generation << 32) | i;
}

// Submits the n SQEs written at the tail and waits until all n have completed; res[i] gets SQE i's
// result. Returns 0, or an errno when io_uring_enter itself failed before anything was submitted.
// After a submission, it waits for every CQE: the kernel may be writing into guest memory, which the
// caller keeps pinned until this returns. If it cannot (a ring that stops answering), the ring is
// poisoned and EIO returned; the caller then leaks its pins, so nothing is ever unmapped under I/O.
int SubmitAndWait(Ring* r, unsigned n, int32_t* res) {
  __atomic_store_n(r->sqTail, *r->sqTail + n, __ATOMIC_RELEASE);
  unsigned toSubmit = n;
  unsigned reaped = 0;
  for (unsigned tries = 0; reaped < n; tries++) {
    if (tries == kMaxEnterTries) {
      r->poisoned = true;
      return EIO;
    }
    int ret = SysEnter(r->fd, toSubmit, n - reaped, IORING_ENTER_GETEVENTS);
    if (ret < 0) {
      int e = errno;
      if (e != EINTR && e != EAGAIN && e != EBUSY) {
        if (toSubmit == n) {
          // Nothing went in: take the SQEs back, so the next burst starts from a clean tail.
          __atomic_store_n(r->sqTail, *r->sqTail - n, __ATOMIC_RELEASE);
          return e;
        }
        r->poisoned = true;
        return e;
      }
    } else {
      toSubmit = (unsigned)ret >= toSubmit ? 0 : toSubmit - (unsigned)ret;
    }
    unsigned head = *r->cqHead;
    unsigned tail = __atomic_load_n(r->cqTail, __ATOMIC_ACQUIRE);
    for (; head != tail; head++) {
      const struct io_uring_cqe* c = &r->cqes[head & r->cqMask];
      uint64_t ud = c->user_data;
      if ((ud >> 32) == (r->generation & 0xffffffffu) && (ud & 0xffffffffu) < n) {
        res[ud & 0xffffffffu] = c->res;
        reaped++;
      }
    }
    __atomic_store_n(r->cqHead, head, __ATOMIC_RELEASE);
  }
  r->generation = (r->generation + 1) & 0xffffffffu;
  return 0;
}

thread_local std::vector<int32_t> tRes;

int32_t* ResScratch(unsigned n) {
  if (tRes.size() < n) tRes.resize(n);
  return tRes.data();
}

// ---- uringCreate(fds: Int32Array, entries) → { id, fd }

// Closes what a failed create made so far and throws.
Napi::Value CreateFail(Napi::Env env, Ring* r, int err, const char* syscall, const std::string& detail) {
  delete r;
  return NativeFail(env, err, syscall, detail);
}

Napi::Value UringCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_TYPED(0, fds, int32_t, napi_int32_array, "fds")
  REQUIRE_ARGUMENT_INTEGER(1, entries, "entries", 1, kMaxEntries)
  if (fds.ElementLength() < 1 || fds.ElementLength() > 64) LGNET_THROW_RANGE("fds: 1 to 64 fds to register");
  for (size_t i = 0; i < fds.ElementLength(); i++)
    if (fds[i] < 0) LGNET_THROW_RANGE("fds: every fd must be open (>= 0)");

  Ring* r = new Ring();
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  // Disabled until restricted. COOP_TASKRUN: completions are reaped by the submitting thread anyway,
  // so no inter-processor interrupt is needed to run them (older kernels refuse it: retry without).
  p.flags = IORING_SETUP_R_DISABLED | IORING_SETUP_COOP_TASKRUN;
  r->fd = SysSetup((unsigned)entries, &p);
  if (r->fd < 0 && errno == EINVAL) {
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_R_DISABLED;
    r->fd = SysSetup((unsigned)entries, &p);
  }
  if (r->fd < 0) {
    int e = errno;
    return CreateFail(env, r, e, "io_uring_setup",
                      e == EPERM ? "io_uring is disabled for this process (sysctl kernel.io_uring_disabled, or a seccomp filter)"
                      : e == ENOSYS ? "this kernel has no io_uring"
                      : "a restricted, disabled ring of " + std::to_string(entries) + " entries");
  }
  r->sqEntries = p.sq_entries;
  r->sqLen = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  r->cqLen = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  const bool single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
  if (single && r->cqLen > r->sqLen) r->sqLen = r->cqLen;
  r->sqMap = mmap(nullptr, r->sqLen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
  if (r->sqMap == MAP_FAILED) return CreateFail(env, r, errno, "mmap", "the io_uring submission ring");
  void* cq = r->sqMap;
  if (!single) {
    r->cqMap = mmap(nullptr, r->cqLen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
    if (r->cqMap == MAP_FAILED) return CreateFail(env, r, errno, "mmap", "the io_uring completion ring");
    cq = r->cqMap;
  }
  r->sqesLen = p.sq_entries * sizeof(struct io_uring_sqe);
  r->sqes = static_cast<struct io_uring_sqe*>(mmap(nullptr, r->sqesLen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES));
  if (r->sqes == MAP_FAILED) return CreateFail(env, r, errno, "mmap", "the io_uring SQE array");
  uint8_t* sq = static_cast<uint8_t*>(r->sqMap);
  r->sqTail = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
  r->sqMask = *reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
  unsigned* array = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
  for (unsigned i = 0; i < p.sq_entries; i++) array[i] = i;  // SQE slot i is always array entry i
  uint8_t* cqb = static_cast<uint8_t*>(cq);
  r->cqHead = reinterpret_cast<unsigned*>(cqb + p.cq_off.head);
  r->cqTail = reinterpret_cast<unsigned*>(cqb + p.cq_off.tail);
  r->cqMask = *reinterpret_cast<unsigned*>(cqb + p.cq_off.ring_mask);
  r->cqes = reinterpret_cast<struct io_uring_cqe*>(cqb + p.cq_off.cqes);

  r->files = (unsigned)fds.ElementLength();
  if (SysRegister(r->fd, IORING_REGISTER_FILES, fds.Data(), r->files) < 0)
    return CreateFail(env, r, errno, "io_uring_register", "IORING_REGISTER_FILES of " + std::to_string(r->files) + " fd(s)");
  // Only READV/WRITEV, only on registered files, no other SQE flag. Of the register ops, only
  // UNREGISTER_FILES once enabled (it can only take the tap away; Ring's destructor uses it): files,
  // buffers, restrictions and personalities cannot be added or changed for the ring's life.
  struct io_uring_restriction res[5];
  memset(res, 0, sizeof res);
  res[0].opcode = IORING_RESTRICTION_SQE_OP;
  res[0].sqe_op = IORING_OP_READV;
  res[1].opcode = IORING_RESTRICTION_SQE_OP;
  res[1].sqe_op = IORING_OP_WRITEV;
  res[2].opcode = IORING_RESTRICTION_SQE_FLAGS_REQUIRED;
  res[2].sqe_flags = IOSQE_FIXED_FILE;
  res[3].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
  res[3].sqe_flags = IOSQE_FIXED_FILE;
  res[4].opcode = IORING_RESTRICTION_REGISTER_OP;
  res[4].register_op = IORING_UNREGISTER_FILES;
  if (SysRegister(r->fd, IORING_REGISTER_RESTRICTIONS, res, 5) < 0)
    return CreateFail(env, r, errno, "io_uring_register", "IORING_REGISTER_RESTRICTIONS (needs Linux 5.10)");
  if (SysRegister(r->fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) < 0)
    return CreateFail(env, r, errno, "io_uring_register", "IORING_REGISTER_ENABLE_RINGS");
  r->enabled = true;

  uint32_t id;
  {
    std::lock_guard<std::mutex> lock(gMu);
    do id = gNextId++;
    while (id == 0 || gRings.count(id));
    r->id = id;
    gRings.emplace(id, std::shared_ptr<Ring>(r));
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("id", Napi::Number::New(env, id));
  out.Set("fd", Napi::Number::New(env, r->fd));
  return out;
}

// uringClose(id): the ring leaves the registry; it is unmapped and closed once no burst uses it.
Napi::Value UringClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, id, "ring id", 1, UINT32_MAX)
  std::shared_ptr<Ring> r;
  {
    std::lock_guard<std::mutex> lock(gMu);
    auto it = gRings.find((uint32_t)id);
    if (it == gRings.end()) return NativeFail(env, EBADF, "io_uring", "ring " + std::to_string(id) + " is not open");
    r = it->second;
    gRings.erase(it);
  }
  return env.Undefined();
}

// uringFds() → number[]: the fds of every open ring (what the jail lets io_uring_enter name).
Napi::Value UringFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(gMu);
  Napi::Array out = Napi::Array::New(env);
  uint32_t i = 0;
  for (auto& kv : gRings) out.Set(i++, Napi::Number::New(env, kv.second->fd));
  return out;
}

// ---- bursts

// uringWritevBatch(id, words, maxEntries, maxFrames, frames) → frames
// One WRITEV per frame, all submitted with one io_uring_enter (chunks of the ring's size), all waited
// for. bytes[i] is frame i's result: bytes written, or -errno (the frames after a failed one were
// still sent; the port tells the caller which failed). Throws only when io_uring_enter itself fails.
napi_value UringWritevBatch(napi_env env, napi_callback_info cbinfo) {
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  Pins pins;
  Batch b;
  if (!PrepareBatch(env, cbinfo, "uringWritevBatch takes (ring, words, maxEntries, maxFrames, frames)", UINT32_MAX, false, pins, &b)) return undefined;
  napi_value result;
  if (b.frames == 0) {
    napi_create_uint32(env, 0, &result);
    return result;
  }
  RingHold held;
  if (!held.Take(env, b.handle)) return undefined;
  Ring* r = held.get();
  uint32_t first = 0;
  while (first < b.frames) {
    unsigned n = b.frames - first < r->sqEntries ? b.frames - first : r->sqEntries;
    for (unsigned i = 0; i < n; i++) {
      uint32_t f = first + i;
      uint32_t start = f == 0 ? 0 : b.ends[f - 1];
      PrepSqe(r, i, IORING_OP_WRITEV, IOSQE_FIXED_FILE, 0, b.iov + start, b.ends[f] - start, RWF_NOWAIT);
    }
    int e = SubmitAndWait(r, n, b.bytes + first);
    if (e != 0) {
      if (r->poisoned) pins.Leak();
      if (first > 0 && !r->poisoned) break;  // what went is reported; the rest was never submitted
      ThrowNativeError(Napi::Env(env), e, "io_uring_enter",
                       "ring " + std::to_string(b.handle) + ", a burst of " + std::to_string(b.frames) + " WRITEVs" +
                           (r->poisoned ? "; the ring is out of use" : ""));
      return undefined;
    }
    first += n;
  }
  napi_create_uint32(env, first, &result);
  return result;
}

// Copies `n` bytes from the iovecs src[0, ns) to the iovecs dst[0, nd) (both guest memory, checked).
void CopyIov(const struct iovec* src, uint32_t ns, const struct iovec* dst, uint32_t nd, size_t n) {
  uint32_t si = 0, di = 0;
  size_t so = 0, doff = 0;
  while (n > 0 && si < ns && di < nd) {
    size_t a = src[si].iov_len - so;
    size_t d = dst[di].iov_len - doff;
    size_t k = a < d ? a : d;
    if (k > n) k = n;
    // memmove: a hostile guest may hand two chains over the same bytes.
    memmove(static_cast<uint8_t*>(dst[di].iov_base) + doff, static_cast<const uint8_t*>(src[si].iov_base) + so, k);
    n -= k;
    so += k;
    doff += k;
    if (so == src[si].iov_len) si++, so = 0;
    if (doff == dst[di].iov_len) di++, doff = 0;
  }
}

// uringReadvBatch(id, words, maxEntries, maxFrames, frames) → slots settled
//
// One READV per frame slot, in rounds of at most `window` READVs per io_uring_enter. A round whose
// READVs all got a frame doubles the window and goes on; the first round that meets an empty tap
// (-EAGAIN) ends the call, and the window shrinks to what that round found, so an idle tap costs a
// READV or two per wake-up, not a burst of them.
//
// Within a round the tap answers the READVs in SQE order, but a frame can arrive between two of them:
//
//   slots   [ f0 ][ f1 ][ EAGAIN ][ f2 ][ EAGAIN ]   f2 arrived just after READV #2 found nothing
//   after   [ f0 ][ f1 ][  f2    ][ f2 ][        ]   f2 copied down into slot 2: frames stay in order;
//                                                    slot 3 still holds what the kernel wrote
//
// A frame after an empty slot is copied down into the first empty slot when it fits there. When it
// does not (a guest with buffers of different sizes), or it is too long for its own slot, it stays
// where it is and the empty slots before it are marked bytes = -1: the caller completes those chains
// with length 0 (no frame is lost and none is reordered; the guest gets those buffers back empty).
// A slot whose READV failed (not EAGAIN: EFAULT where the guest's memory went away) is never copied
// into; in front of a frame it is marked -1 as well.
//
// Each READV's buffers are followed by the spill byte (gSpill): bytes = room + 1 is a frame longer
// than its slot, which the caller drops (a tap would otherwise report it cut to the room).
//
// written[i] (IovecTable.written) is, for every slot i < frames, the bytes this call put into slot
// i's buffers, by the kernel or by a copy: more than bytes[i] says where a frame was read and then
// copied down (above: slot 3), or a slot is past the ones settled. The caller must log them for
// migration (dirty log): the guest's memory changed there even though no used entry says so.
//
// Returns the number of slots settled (frames, and -1 slots among them); bytes of the slots after that
// are untouched. A READV error other than EAGAIN ends the call like EAGAIN, and is thrown when nothing
// was read at all; the status word counts the other such READVs (SetReadFailures in batch.h), since
// each lost the frame it was copying.
napi_value UringReadvBatch(napi_env env, napi_callback_info cbinfo) {
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  Pins pins;
  Batch b;
  if (!PrepareBatch(env, cbinfo, "uringReadvBatch takes (ring, words, maxEntries, maxFrames, frames)", UINT32_MAX, true, pins, &b)) return undefined;
  napi_value result;
  if (b.frames == 0) {
    SetReadFailures(b, 0, 0);
    napi_create_uint32(env, 0, &result);
    return result;
  }
  if (b.written == nullptr) {
    napi_throw_range_error(env, nullptr, "uringReadvBatch needs the words of a whole IovecTable (bytes, then written)");
    return undefined;
  }
  RingHold held;
  if (!held.Take(env, b.handle)) return undefined;
  Ring* r = held.get();
  // A slot's iovecs, the spill iovec last (what its READV gets), and its guest iovecs alone.
  auto slotIov = [&](uint32_t f) { return b.iov + (f == 0 ? 0 : b.ends[f - 1]); };
  auto slotLen = [&](uint32_t f) { return b.ends[f] - (f == 0 ? 0 : b.ends[f - 1]); };
  auto guestLen = [&](uint32_t f) { return slotLen(f) - 1; };
  auto wrote = [&](uint32_t f, size_t n) {
    if (n > b.written[f]) b.written[f] = (uint32_t)n;
  };
  memset(b.written, 0, (size_t)b.frames * sizeof(uint32_t));

  uint32_t settled = 0;  // slots [0, settled) hold frames (or -1)
  int firstErr = 0;
  uint32_t failures = 0;  // READVs that failed other than EAGAIN: each lost the frame it was copying
  while (settled < b.frames) {
    unsigned w = r->window;
    if (w > r->sqEntries) w = r->sqEntries;
    unsigned n = b.frames - settled < w ? b.frames - settled : w;
    for (unsigned i = 0; i < n; i++) PrepSqe(r, i, IORING_OP_READV, IOSQE_FIXED_FILE, 0, slotIov(settled + i), slotLen(settled + i), RWF_NOWAIT);
    int32_t* res = ResScratch(n);
    int e = SubmitAndWait(r, n, res);
    if (e != 0) {
      if (r->poisoned) pins.Leak();
      if (settled > 0 && !r->poisoned) break;
      ThrowNativeError(Napi::Env(env), e, "io_uring_enter",
                       "ring " + std::to_string(b.handle) + ", a round of " + std::to_string(n) + " READVs" +
                           (r->poisoned ? "; the ring is out of use" : ""));
      return undefined;
    }
    // Settle the round: frames in order into slots settled, settled+1, …
    unsigned got = 0;
    bool empty = false;
    uint32_t fill = settled;  // the next slot a frame belongs in
    auto failedAt = [&](uint32_t f) { return res[f - settled] < 0 && res[f - settled] != -EAGAIN; };
    for (unsigned i = 0; i < n; i++) {
      int32_t v = res[i];
      uint32_t slot = settled + i;
      size_t room = FrameRoom(b, slot);
      if (v < 0) {
        empty = true;
        if (v != -EAGAIN) {
          if (firstErr == 0) firstErr = -v;
          failures++;
          wrote(slot, room);  // a failed copy may have written part of a frame
        }
        continue;
      }
      got++;
      wrote(slot, (size_t)v < room ? (size_t)v : room);
      // A slot whose READV failed is never copied into (its memory may be what failed): given back empty.
      while (fill < slot && failedAt(fill)) b.bytes[fill++] = -1;
      if (slot != fill) {
        // A frame too long for its own slot is never moved: the caller drops it where it lies.
        if ((size_t)v <= room && (size_t)v <= FrameRoom(b, fill)) {
          CopyIov(slotIov(slot), guestLen(slot), slotIov(fill), guestLen(fill), (size_t)v);
          wrote(fill, (size_t)v);
        } else {
          for (; fill < slot; fill++) b.bytes[fill] = -1;  // given back empty, in front of the frame
        }
      }
      b.bytes[fill++] = v;
    }
    settled = fill;
    if (!empty) {
      r->window = w * 2 > kMaxEntries ? kMaxEntries : w * 2;
      continue;
    }
    r->window = got + 1 > 2 ? got + 1 : 2;
    break;
  }
  if (settled == 0 && firstErr != 0) {
    SetReadFailures(b, failures - 1, firstErr);  // the exception stands for one of them
    ThrowNativeError(Napi::Env(env), firstErr, "readv", "ring " + std::to_string(b.handle) + ", READV 0 of a burst");
    return undefined;
  }
  SetReadFailures(b, failures, firstErr);
  napi_create_uint32(env, settled, &result);
  return result;
}

// ---- uringReadvMerged: readvMerged's contract (batch.cc) through the ring, with the RX filter applied here
//
// Each round plans up to `window` READVs, each over the fewest whole buffers from where the last one
// ended that hold `need` (a group), and submits them in one io_uring_enter. Frames then settle in
// order from `fill`, the first buffer no frame took. A frame that took fewer buffers than its group
// leaves a gap, so the next one is copied down to `fill` (its group lies further on, and the room from
// fill to its group's end is at least the group's):
//
//   groups   [ b0 b1 ][ b2 b3 ][ b4 b5 ]        need = 2 buffers; three READVs in one enter
//   read     f0 → b0 (64 B)  f1 → b2 b3 (1500 B)  f2 → b4 (64 B)
//   settled  f0 → b0, used 1; f1 copied to b1 b2, used 2; f2 copied to b3, used 1; fill = b4
//
// A frame longer than maxLen or than its group, or one the filter rejects, takes no buffer (used 0;
// rejected: bytes = −length) and the next frame lands where it would have. There is no PEEK stop:
// the filter is whole, so a round's frames are all settled. The kernel and the copies may write into
// any buffer offered, taken or not: the caller logs them all for migration (dirty log).
//
// Stops as readvMerged does: FRAMES, EMPTY (a READV met an empty tap), NO_ROOM (not one group left),
// PIECES (the first group of a round exceeds IOV_MAX − 1 pieces), ERROR (a READV failed after a frame
// was recorded; with none, it throws). A frame read after a failed READV of its round is not placed (its
// buffers would be the ones that failed): like the failed READVs beyond the one that ERROR or the
// exception stands for, it is counted in the status word's read-failure bits (batch.h ReadFailureBits),
// which the caller adds to its drops.

// The stage: when a group spans more than kStageGroup buffers (a guest that takes TSO into 1536-byte
// buffers: 43 of them per group, so a 256-entry ring holds 5 groups), copy-down rounds are bound by
// the ring to a few READVs per enter. Staged rounds instead read up to kStageSlots frames, one per
// READV, each into a slot of host memory that holds the largest one, and copy each frame from its slot
// into the fewest buffers from `cur`, in order:
//
//   stage    [ f0 64 B ][ f1 64 B ][ f2 1500 B ][ f3 64 B ]      one READV per slot, one enter
//   buffers  f0 → b0, f1 → b1, f2 → b2 (used 1), f3 → b3          one copy per frame, exactly its bytes
//
// A frame that does not fit the buffers left stays in its slot, with the frames after it (the stash);
// the call stops with NO_ROOM, and the next call places them before it reads anything. The device
// discards and counts what the stash holds when the queue stops (uringRxStash). Only a frame's own
// bytes, just written by the kernel, leave a slot. A frame above kBigFrame sends the ring back to
// copy-down rounds for kDirectCalls calls, which copy such frames once, not twice. A frame that fits
// the buffer it would take is read into that buffer, not its slot (StagedRounds), and is not copied.

// Maps the stage with slots of at least `bytes` (the stash must be empty). False when it cannot.
bool MapStage(Ring* r, uint64_t bytes) {
  constexpr uint64_t kMaxSlot = 1u << 20;
  if (bytes > kMaxSlot) return false;
  const size_t tail = bytes > kStageHead ? (size_t)bytes - kStageHead : 0;
  const size_t slot = kStageHead + ((tail + 4095) & ~(size_t)4095);
  if (r->stage != nullptr && r->stageSlot >= slot) return true;
  if (r->stage != nullptr) munmap(r->stage, kStageSlots * r->stageSlot);
  r->stage = nullptr;
  void* p = mmap(nullptr, kStageSlots * slot, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return false;
  r->stage = static_cast<uint8_t*>(p);
  r->stageSlot = slot;
  return true;
}

// Iovecs for bytes [from, to) of slot `slot` (to ≤ stageSlot), seen as one run: its head, then its tail.
uint32_t SlotIov(const Ring* r, uint32_t slot, size_t from, size_t to, struct iovec* iov) {
  uint32_t n = 0;
  if (from < kStageHead && to > from) {
    const size_t e = to < kStageHead ? to : kStageHead;
    iov[n++] = {r->stage + (size_t)slot * kStageHead + from, e - from};
  }
  if (to > kStageHead) {
    const size_t s = from > kStageHead ? from : kStageHead;
    const size_t tail = r->stageSlot - kStageHead;
    iov[n++] = {r->stage + kStageSlots * kStageHead + (size_t)slot * tail + (s - kStageHead), to - s};
  }
  return n;
}

// Slot `slot`'s iovecs for its first `len` bytes.
uint32_t StageIov(const Ring* r, uint32_t slot, size_t len, struct iovec* iov) { return SlotIov(r, slot, 0, len, iov); }

// A READV of a staged round reads straight into its head buffer (the buffer it would take if every
// frame before it took one) when that buffer has at most this many pieces; the rest of its slot follows.
constexpr uint32_t kDirectPieces = 8;
constexpr uint32_t kRoundIov = kDirectPieces + 2;

thread_local std::vector<struct iovec> tStageIov;

// Buffer b's first iovec in a merged call's translated table.
inline struct iovec* BufIov(const Merged& m, uint32_t b) { return m.iov + (m.ends[b] - m.base); }

// Rounds of READVs into the stage (above), until FRAMES, EMPTY, NO_ROOM or ERROR. False with a JS
// exception pending when io_uring_enter failed before any frame was recorded.
//
// READV i of a round reads into buffer cur + i first, then into its slot from that buffer's room on:
//
//   READV i   [ buffer cur+i (room r) ][ slot i, bytes r … need+1 ]
//
// While every frame fits its own buffer, passes the filter and no READV before it came back empty,
// frame i is in buffer cur + i already: used 1, nothing copied. At the first frame that does not (a
// deviation), the heads of it and of every later frame of the round are copied from their buffers
// into their slots before anything else is written, and the round settles from the stage as above.
template <typename Fit, typename Place>
bool StagedRounds(napi_env env, Ring* r, Merged& m, const RxFilterSpec* filter, Pins& pins, Fit& fit, Place& place,
                  uint32_t* done, uint32_t* cur, uint32_t* stop, int* firstErr, uint32_t* failures, bool* big) {
  if (tStageIov.size() < kRoundIov * kStageSlots) tStageIov.resize(kRoundIov * kStageSlots);
  struct iovec* siov = tStageIov.data();
  auto pieces = [&](uint32_t b) { return m.ends[b + 1] - m.ends[b]; };
  bool direct[kStageSlots];
  while (*done < m.frames) {
    unsigned w = r->window < r->sqEntries ? r->window : r->sqEntries;
    if (w > kStageSlots) w = kStageSlots;
    if (w > m.frames - *done) w = m.frames - *done;
    if (w > m.buffers - *cur) w = m.buffers - *cur;  // a frame takes one buffer at least
    if (w == 0) {
      *stop = kStopNoRoom;
      return true;
    }
    // need + 1: a frame that fills the spill byte is longer than need.
    const uint32_t base = *cur;
    for (unsigned i = 0; i < w; i++) {
      struct iovec* iov = siov + kRoundIov * i;
      const uint32_t b = base + i;
      uint32_t n = 0;
      direct[i] = pieces(b) <= kDirectPieces && m.room[b] < m.need;
      if (direct[i]) {
        memcpy(iov, BufIov(m, b), (size_t)pieces(b) * sizeof(struct iovec));
        n = pieces(b);
        n += SlotIov(r, i, m.room[b], (size_t)m.need + 1, iov + n);
      } else {
        n = StageIov(r, i, (size_t)m.need + 1, iov);
      }
      PrepSqe(r, i, IORING_OP_READV, IOSQE_FIXED_FILE, 0, iov, n, RWF_NOWAIT);
    }
    int32_t* res = ResScratch(w);
    int e = SubmitAndWait(r, w, res);
    if (e != 0) {
      if (r->poisoned) pins.Leak();
      if (*done > 0 && !r->poisoned) {
        *stop = kStopError;
        return true;
      }
      ThrowNativeError(Napi::Env(env), e, "io_uring_enter",
                       "ring " + std::to_string(m.handle) + ", a round of " + std::to_string(w) + " staged READVs" +
                           (r->poisoned ? "; the ring is out of use" : ""));
      return false;
    }
    unsigned got = 0;
    bool empty = false;
    bool deviated = false;
    bool failed = false;
    for (unsigned i = 0; i < w; i++) {
      const int32_t v = res[i];
      if (failed) {
        // A frame after a failed READV would go into the buffers that failed: it is lost, and counted.
        if (v != -EAGAIN) ++*failures;
        continue;
      }
      if (!deviated) {
        const uint32_t b = base + i;
        bool fits = v > 0 && direct[i] && (uint32_t)v <= m.room[b] && v <= m.maxLen;
        if (fits && filter != nullptr) {
          uint8_t eth[16];
          const uint32_t have = (uint32_t)v > filter->hdrLen ? GatherBytes(BufIov(m, b), pieces(b), filter->hdrLen, eth, sizeof eth) : 0;
          fits = RxFilterAccepts(*filter, eth, have, (int64_t)v - filter->hdrLen);
        }
        if (fits) {
          got++;
          m.bytes[*done] = v;
          m.used[(*done)++] = 1;
          (*cur)++;
          continue;
        }
        // Frames i … w−1 move wholly into their slots before any copy writes a buffer.
        for (unsigned j = i; j < w; j++) {
          if (!direct[j] || res[j] <= 0) continue;
          const uint32_t bj = base + j;
          const size_t head = (uint32_t)res[j] < m.room[bj] ? (size_t)res[j] : m.room[bj];
          struct iovec dst[2];
          const uint32_t nd = SlotIov(r, j, 0, head, dst);
          CopyIov(BufIov(m, bj), pieces(bj), dst, nd, head);
        }
        deviated = true;
      }
      if (v < 0) {
        empty = true;
        if (v != -EAGAIN) {
          if (*firstErr == 0) *firstErr = -v;
          ++*failures;
          failed = true;
        }
        continue;
      }
      got++;
      if (v == 0 || v > m.maxLen || (uint64_t)v > m.need) {
        m.bytes[*done] = v;
        m.used[(*done)++] = 0;  // dropped by the caller
        continue;
      }
      if ((uint32_t)v > kBigFrame) *big = true;
      if (filter != nullptr) {
        uint8_t eth[16];
        struct iovec src[2];
        const uint32_t ns = StageIov(r, i, (size_t)v, src);
        const uint32_t have = (uint32_t)v > filter->hdrLen ? GatherBytes(src, ns, filter->hdrLen, eth, sizeof eth) : 0;
        if (!RxFilterAccepts(*filter, eth, have, (int64_t)v - filter->hdrLen)) {
          m.bytes[*done] = -v;
          m.used[(*done)++] = 0;
          continue;
        }
      }
      if (r->stashN == 0) {
        const uint32_t to = fit(*cur, (uint64_t)v);
        if (to <= m.buffers) {
          place(i, (uint32_t)v, to);
          continue;
        }
        r->stashAt = 0;
      }
      r->stageLen[i] = (uint32_t)v;
      r->stash[r->stashN++] = i;
    }
    if (r->stashN > 0) {
      *stop = kStopNoRoom;
      return true;
    }
    if (empty) {
      r->window = got + 1 > 2 ? got + 1 : 2;
      *stop = *firstErr != 0 && *done > 0 ? kStopError : kStopEmpty;
      return true;
    }
    r->window = w * 2 > kMaxEntries ? kMaxEntries : w * 2;
  }
  return true;
}

struct Group {
  uint32_t from, to;  // buffers [from, to)
  uint64_t have;      // their room
  uint32_t at, niov;  // their iovecs in the round's copy (then the spill iovec)
};
thread_local std::vector<struct iovec> tRoundIov;
thread_local std::vector<Group> tGroups;

napi_value UringReadvMerged(napi_env env, napi_callback_info cbinfo) {
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  Pins pins;
  Merged m;
  if (!PrepareMerged(env, cbinfo, "uringReadvMerged takes (ring, words, maxEntries, maxFrames, first, buffers, frames, need, maxLen, filter?)",
                     UINT32_MAX, pins, &m))
    return undefined;
  RxFilterSpec filter;
  bool filtering = false;
  if (!ParseRxFilter(env, m.extra, &filter, &filtering)) return undefined;
  napi_value result;
  if (m.frames == 0 || m.buffers == 0) {
    napi_create_uint32(env, 0, &result);
    return result;
  }
  RingHold held;
  if (!held.Take(env, m.handle)) return undefined;
  Ring* r = held.get();
  const uint32_t nb = m.buffers;
  const uint32_t* ends = m.ends;
  const uint32_t* room = m.room;
  auto bufIov = [&](uint32_t b) { return BufIov(m, b); };
  if (tGroups.size() < kMaxEntries) tGroups.resize(kMaxEntries);
  Group* groups = tGroups.data();

  uint32_t done = 0;
  uint32_t cur = 0;  // the first buffer no frame took
  uint32_t stop = kStopFrames;
  int firstErr = 0;
  uint32_t failures = 0;  // READVs that failed other than EAGAIN, and frames after them in their round: each a frame lost
  bool big = false;  // a frame above kBigFrame came
  // The end of the fewest buffers from `from` that hold `len` bytes, or nb + 1 when all of them do not.
  auto fit = [&](uint32_t from, uint64_t len) -> uint32_t {
    uint64_t have = 0;
    uint32_t k = from;
    while (have < len && k < nb) have += room[k++];
    return have >= len ? k : nb + 1;
  };
  // Copies the frame in stage slot `slot` (v bytes) to buffers [cur, to) and records it.
  auto place = [&](uint32_t slot, uint32_t v, uint32_t to) {
    struct iovec src[2];
    const uint32_t ns = StageIov(r, slot, v, src);
    CopyIov(src, ns, bufIov(cur), ends[to] - ends[cur], v);
    m.bytes[done] = (int32_t)v;
    m.used[done++] = to - cur;
    cur = to;
  };
  // Frames an earlier call staged and could not place go first, in order.
  while (r->stashN > 0 && done < m.frames) {
    const uint32_t slot = r->stash[r->stashAt];
    const uint32_t to = fit(cur, r->stageLen[slot]);
    if (to > nb) break;
    place(slot, r->stageLen[slot], to);
    r->stashAt++;
    r->stashN--;
  }
  const bool staged = r->stashN == 0 && r->directCalls == 0 && fit(cur, m.need) - cur > kStageGroup && MapStage(r, m.need + 1);
  if (r->stashN > 0) {
    stop = done < m.frames ? kStopNoRoom : kStopFrames;
  } else if (staged) {
    if (!StagedRounds(env, r, m, filtering ? &filter : nullptr, pins, fit, place, &done, &cur, &stop, &firstErr, &failures, &big)) return undefined;
  } else while (done < m.frames) {
    unsigned w = r->window < r->sqEntries ? r->window : r->sqEntries;
    if (w > m.frames - done) w = m.frames - done;
    // Plan the round: consecutive groups from cur.
    unsigned n = 0;
    uint32_t p = cur;
    size_t iovs = 0;
    bool pieces = false;
    while (n < w) {
      uint64_t have = 0;
      uint32_t k = p;
      while (have < m.need && k < nb) have += room[k++];
      if (have < m.need) break;
      const uint32_t niov = ends[k] - ends[p];
      if (niov + 1 > IOV_MAX) {
        pieces = n == 0;
        break;
      }
      groups[n++] = {p, k, have, (uint32_t)iovs, niov};
      iovs += niov + 1;
      p = k;
    }
    if (n == 0) {
      stop = pieces ? kStopPieces : kStopNoRoom;
      break;
    }
    // Each READV gets its own copy of its buffers' iovecs and the spill byte after them.
    if (tRoundIov.size() < iovs) tRoundIov.resize(iovs);
    struct iovec* riov = tRoundIov.data();
    for (unsigned i = 0; i < n; i++) {
      const Group& g = groups[i];
      memcpy(riov + g.at, bufIov(g.from), (size_t)g.niov * sizeof(struct iovec));
      riov[g.at + g.niov] = {gSpill, 1};
      PrepSqe(r, i, IORING_OP_READV, IOSQE_FIXED_FILE, 0, riov + g.at, g.niov + 1, RWF_NOWAIT);
    }
    int32_t* res = ResScratch(n);
    int e = SubmitAndWait(r, n, res);
    if (e != 0) {
      if (r->poisoned) pins.Leak();
      if (done > 0 && !r->poisoned) {
        stop = kStopError;
        break;
      }
      ThrowNativeError(Napi::Env(env), e, "io_uring_enter",
                       "ring " + std::to_string(m.handle) + ", a round of " + std::to_string(n) + " merged READVs" +
                           (r->poisoned ? "; the ring is out of use" : ""));
      return undefined;
    }
    // Settle the round in order from cur.
    uint32_t fill = cur;
    unsigned got = 0;
    bool empty = false;
    bool failed = false;
    for (unsigned i = 0; i < n; i++) {
      const Group& g = groups[i];
      const int32_t v = res[i];
      if (failed) {
        // A frame after a failed READV would be copied down into the buffers that failed: lost, and counted.
        if (v != -EAGAIN) failures++;
        continue;
      }
      if (v < 0) {
        empty = true;
        if (v != -EAGAIN) {
          if (firstErr == 0) firstErr = -v;
          failures++;
          failed = true;
        }
        continue;
      }
      got++;
      m.bytes[done] = v;
      if (v == 0 || v > m.maxLen || (uint64_t)v > g.have) {
        m.used[done++] = 0;  // dropped by the caller; its buffers take the next frame
        continue;
      }
      if ((uint32_t)v > kBigFrame) big = true;
      const struct iovec* src = riov + g.at;
      if (filtering) {
        uint8_t eth[16];
        const uint32_t have = (uint32_t)v > filter.hdrLen ? GatherBytes(src, g.niov, filter.hdrLen, eth, sizeof eth) : 0;
        if (!RxFilterAccepts(filter, eth, have, (int64_t)v - filter.hdrLen)) {
          m.bytes[done] = -v;
          m.used[done++] = 0;
          continue;
        }
      }
      if (g.from != fill) CopyIov(src, g.niov, bufIov(fill), ends[g.to] - ends[fill], (size_t)v);
      uint32_t u = 0;
      for (uint64_t acc = 0; acc < (uint64_t)v; u++) acc += room[fill + u];
      m.used[done++] = u;
      fill += u;
    }
    cur = fill;
    if (empty) {
      r->window = got + 1 > 2 ? got + 1 : 2;
      stop = firstErr != 0 && done > 0 ? kStopError : kStopEmpty;
      break;
    }
    r->window = w * 2 > kMaxEntries ? kMaxEntries : w * 2;
  }
  if (big) {
    r->directCalls = kDirectCalls;
    // The slots a large frame touched go back to the kernel (the stage stays small in RSS).
    if (staged && r->stashN == 0 && r->stageSlot > kStageHead) madvise(r->stage + kStageSlots * kStageHead, kStageSlots * (r->stageSlot - kStageHead), MADV_DONTNEED);
  } else if (r->directCalls > 0) {
    r->directCalls--;
  }
  // The ERROR stop, or the exception, stands for one lost frame; the status word counts the rest.
  const bool thrown = done == 0 && firstErr != 0;
  const uint32_t unreported = failures > 0 && (thrown || stop == kStopError) ? failures - 1 : failures;
  if (thrown) {
    *m.status = ReadFailureBits(unreported, firstErr) | (r->stashN > 0 ? kStatusStashed : 0);
    ThrowNativeError(Napi::Env(env), firstErr, "readv", "ring " + std::to_string(m.handle) + ", READV 0 of a merged burst");
    return undefined;
  }
  *m.status = stop | (staged && r->directCalls == 0 ? kStatusStaged : 0) | (r->stashN > 0 ? kStatusStashed : 0) |
              ReadFailureBits(unreported, firstErr);
  napi_create_uint32(env, done, &result);
  return result;
}

// ---- uringRxStash(id, discard) → frames the stage holds read and not delivered (then none, if discard)

Napi::Value UringRxStash(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, id, "ring id", 1, UINT32_MAX)
  REQUIRE_ARGUMENT_BOOLEAN(1, discard, "discard")
  RingHold held;
  if (!held.Take(env, id, true)) return env.Undefined();  // a ring that gave up still says what it holds
  Ring* r = held.get();
  const uint32_t n = r->stashN;
  if (discard) r->stashN = 0;
  return Napi::Number::New(env, n);
}

// ---- uringTry: one SQE of any kind, for tests and diagnostics of the restrictions

// uringTry(id, op, fd, fixed, buf?) → the CQE's result (negative errno when refused or failed).
// op: 'nop' | 'readv' | 'writev' | 'read' | 'openat' | 'connect' | 'close'. readv/writev/read use buf
// as the one buffer; openat takes buf as a NUL-terminated path (O_RDONLY, relative to the cwd);
// connect takes buf as a sockaddr. Whatever it asks, the ring's restrictions decide.
Napi::Value UringTry(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, id, "ring id", 1, UINT32_MAX)
  REQUIRE_ARGUMENT_STRING(1, op, "op")
  REQUIRE_ARGUMENT_INTEGER(2, fd, "fd", -100, INT32_MAX)
  REQUIRE_ARGUMENT_BOOLEAN(3, fixed, "fixed")
  uint8_t* buf = nullptr;
  size_t bufLen = 0;
  if (info.Length() > 4 && !info[4].IsUndefined() && !info[4].IsNull()) {
    REQUIRE_ARGUMENT_BYTES(4, bytes, "buf")
    buf = bytes.Data();
    bufLen = bytes.ByteLength();
  }
  RingHold held;
  if (!held.Take(env, id)) return env.Undefined();
  Ring* r = held.get();
  struct iovec iov = {buf, bufLen};
  const uint8_t flags = fixed ? IOSQE_FIXED_FILE : 0;
  if (op == "nop") PrepSqe(r, 0, IORING_OP_NOP, flags, fd, nullptr, 0, 0);
  else if (op == "readv") PrepSqe(r, 0, IORING_OP_READV, flags, fd, &iov, 1, RWF_NOWAIT);
  else if (op == "writev") PrepSqe(r, 0, IORING_OP_WRITEV, flags, fd, &iov, 1, RWF_NOWAIT);
  else if (op == "read") PrepSqe(r, 0, IORING_OP_READ, flags, fd, buf, (uint32_t)bufLen, RWF_NOWAIT);
  else if (op == "close") PrepSqe(r, 0, IORING_OP_CLOSE, 0, fd, nullptr, 0, 0);
  else if (op == "openat") {
    if (buf == nullptr || memchr(buf, 0, bufLen) == nullptr) LGNET_THROW_TYPE("openat needs buf: a NUL-terminated path");
    PrepSqe(r, 0, IORING_OP_OPENAT, flags, fd, buf, 0, 0);  // len = mode 0, open_flags = O_RDONLY
  } else if (op == "connect") {
    if (buf == nullptr) LGNET_THROW_TYPE("connect needs buf: a sockaddr");
    PrepSqe(r, 0, IORING_OP_CONNECT, flags, fd, buf, 0, 0);
    r->sqes[*r->sqTail & r->sqMask].off = bufLen;  // addrlen
  } else {
    LGNET_THROW_RANGE("op must be one of nop, readv, writev, read, close, openat, connect");
  }
  int32_t res = 0;
  int e = SubmitAndWait(r, 1, &res);
  if (e != 0) return NativeFail(env, e, "io_uring_enter", "ring " + std::to_string(id) + ", one " + op + " SQE");
  return Napi::Number::New(env, res);
}

// uringRegister(id, op): io_uring_register(ring fd, op, NULL, 0); throws its failure. A restricted
// ring refuses every op once enabled (EACCES), and the jail refuses the syscall (EPERM).
Napi::Value UringRegister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, id, "ring id", 1, UINT32_MAX)
  REQUIRE_ARGUMENT_INTEGER(1, op, "op", 0, 255)
  std::shared_ptr<Ring> ring = FindRing((uint32_t)id);
  if (!ring) return NativeFail(env, EBADF, "io_uring", "ring " + std::to_string(id) + " is not open");
  if (SysRegister(ring->fd, (unsigned)op, nullptr, 0) < 0)
    return NativeFail(env, errno, "io_uring_register", "op " + std::to_string(op) + " on ring " + std::to_string(id));
  return env.Undefined();
}

Napi::Function Raw(Napi::Env env, napi_callback cb, const char* name) {
  napi_value fn;
  napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, nullptr, &fn);
  return Napi::Function(env, fn);
}

}  // namespace

void RegisterUring(Napi::Env env, Napi::Object exports) {
  exports.Set("uringCreate", Napi::Function::New(env, UringCreate, "uringCreate"));
  exports.Set("uringClose", Napi::Function::New(env, UringClose, "uringClose"));
  exports.Set("uringFds", Napi::Function::New(env, UringFds, "uringFds"));
  exports.Set("uringWritevBatch", Raw(env, UringWritevBatch, "uringWritevBatch"));
  exports.Set("uringReadvMerged", Raw(env, UringReadvMerged, "uringReadvMerged"));
  exports.Set("uringReadvBatch", Raw(env, UringReadvBatch, "uringReadvBatch"));
  exports.Set("uringTry", Napi::Function::New(env, UringTry, "uringTry"));
  exports.Set("uringRxStash", Napi::Function::New(env, UringRxStash, "uringRxStash"));
  exports.Set("uringRegister", Napi::Function::New(env, UringRegister, "uringRegister"));
}

}  // namespace lgnet
