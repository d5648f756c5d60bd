// memory.cc: guest memory and scratch buffers: memfd_create, mmap into the registry, external
// ArrayBuffers over a mapping (one per thread that asks), and release. See registry.h for lifetimes,
// guard.cc for what happens when a mapped file shrinks.
#include "common.h"
#include "guard.h"
#include "registry.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <vector>

namespace lgnet {
namespace {

constexpr uint32_t kSlotBits = 16;
constexpr uint32_t kMaxSlots = 1u << kSlotBits;  // at most 65536 live mappings

struct Slot {
  uint32_t id = 0;  // 0: free
  uint16_t generation = 0;
  Mapping* mapping = nullptr;
};

struct Registry {
  std::mutex mutex;
  std::vector<Slot> slots;
  std::vector<uint32_t> freeSlots;
};

// Never destroyed: finalizers of ArrayBuffers may run during process teardown.
Registry& Reg() {
  static Registry* registry = new Registry();
  return *registry;
}

std::string IdDetail(double id) { return "mapping id " + std::to_string((int64_t)id); }

// Adds a mapping to the registry; returns its id, or 0 when the registry is full.
uint32_t Insert(uint8_t* addr, size_t size, size_t span, int32_t guard) {
  Registry& r = Reg();
  std::lock_guard<std::mutex> lock(r.mutex);
  uint32_t slot;
  if (!r.freeSlots.empty()) {
    slot = r.freeSlots.back();
    r.freeSlots.pop_back();
  } else {
    if (r.slots.size() >= kMaxSlots) return 0;
    slot = (uint32_t)r.slots.size();
    r.slots.emplace_back();
  }
  Slot& s = r.slots[slot];
  s.generation = (uint16_t)(s.generation == UINT16_MAX ? 1 : s.generation + 1);
  s.id = ((uint32_t)s.generation << kSlotBits) | slot;
  s.mapping = new Mapping{addr, size, s.id, {1}, span, guard};  // the registry's reference
  return s.id;
}

Napi::Value Register(Napi::Env env, uint8_t* addr, size_t size, size_t span, int32_t guard) {
  uint32_t id = Insert(addr, size, span, guard);
  if (id == 0) {
    GuardRemove(guard);
    munmap(addr, span);
    return NativeFail(env, ENOMEM, "mapping", "the registry holds 65536 mappings; release some with munmap");
  }
  return Napi::Number::New(env, id);
}

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

// memfdCreate(name, size, sealable) -> fd (MFD_CLOEXEC, MFD_ALLOW_SEALING if sealable, truncated to size).
Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_STRING(0, name, "name")
  REQUIRE_ARGUMENT_INTEGER(1, size, "size", 0, (int64_t)kMaxSafeInteger)
  REQUIRE_ARGUMENT_BOOLEAN(2, sealable, "sealable")
  // Sealable, so that a mapping of it can be protected against shrinking (see Mmap). Tests make
  // unsealable ones to play a front-end whose memory can shrink under lgnet.
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC | (sealable ? MFD_ALLOW_SEALING : 0));
  if (fd < 0) return NativeFail(env, errno, "memfd_create", "name '" + name + "'");
  if (ftruncate(fd, (off_t)size) < 0) {
    int err = errno;
    close(fd);
    return NativeFail(env, err, "ftruncate", "memfd '" + name + "' to " + std::to_string(size) + " bytes");
  }
  return Napi::Number::New(env, fd);
}

// mmap(fd, offset, length) -> mapping id. MAP_SHARED, read/write, guarded against SIGBUS (guard.cc).
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  REQUIRE_ARGUMENT_INTEGER(1, offset, "offset", 0, (int64_t)kMaxSafeInteger)
  REQUIRE_ARGUMENT_INTEGER(2, length, "length", 1, (int64_t)kMaxSafeInteger)
  std::string detail = "fd " + std::to_string(fd) + " offset " + std::to_string(offset) + " length " +
                       std::to_string(length);
  // Touching a shared file mapping past the end of the file raises SIGBUS: refuse such ranges now.
  struct stat st;
  if (fstat(fd, &st) < 0) return NativeFail(env, errno, "fstat", detail);
  if (S_ISREG(st.st_mode)) {
    // And keep them valid: where the fd can carry seals (a memfd), forbid shrinking first, then read
    // the size again, so that a front-end cannot truncate the file under the mapping later. A file
    // that cannot be sealed (tmpfs, hugetlbfs, or F_SEAL_SEAL already set) is mapped as it is.
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0 && fstat(fd, &st) < 0) return NativeFail(env, errno, "fstat", detail);
  }
  if (S_ISREG(st.st_mode) && (offset > st.st_size || length > st.st_size - offset))
    return NativeFail(env, EINVAL, "mmap", detail + ": range ends past the file size " + std::to_string(st.st_size));
  // The extent of the mapping, which the guard replaces whole: pages, or huge pages on hugetlbfs
  // (whose mappings cannot be split inside a huge page, so a small-page extent would make the guard's
  // replacement fail there). The jail allows fstatfs for this (sandbox/seccomp-policy.ts).
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  struct statfs fs;
  if (fstatfs(fd, &fs) == 0 && (uint32_t)fs.f_type == (uint32_t)HUGETLBFS_MAGIC && fs.f_bsize > 0 &&
      ((size_t)fs.f_bsize & ((size_t)fs.f_bsize - 1)) == 0)
    page = (size_t)fs.f_bsize;
  size_t span = RoundUp((size_t)length, page);
  void* addr = mmap(nullptr, (size_t)length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)offset);
  if (addr == MAP_FAILED) return NativeFail(env, errno, "mmap", detail);
  int32_t guard = GuardAdd(addr, span);
  if (guard < 0) {
    munmap(addr, span);
    return NativeFail(env, ENOMEM, "mapping", detail + ": 65536 guest mappings are still referenced; release some");
  }
  return Register(env, (uint8_t*)addr, (size_t)length, span, guard);
}

// mmapAnonymous(length) -> mapping id (private zeroed memory, shared by all threads).
Napi::Value MmapAnonymous(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, length, "length", 1, (int64_t)kMaxSafeInteger)
  void* addr = mmap(nullptr, (size_t)length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (addr == MAP_FAILED) return NativeFail(env, errno, "mmap", "anonymous length " + std::to_string(length));
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  return Register(env, (uint8_t*)addr, (size_t)length, RoundUp((size_t)length, page), -1);
}

void FinalizeBuffer(napi_env, void*, void* hint) { MappingUnref(static_cast<Mapping*>(hint)); }

// mappingBuffer(id) -> external ArrayBuffer over the mapping, owned by the calling thread.
Napi::Value MappingBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, id, "mapping id", 0, UINT32_MAX)
  Mapping* m;
  {
    std::lock_guard<std::mutex> lock(RegistryMutex());
    m = FindMappingLocked((uint32_t)id);
    if (m == nullptr) return NativeFail(env, EBADF, "mapping", IdDetail((double)id));
    MappingRef(m);
  }
  napi_value ab;
  napi_status status = napi_create_external_arraybuffer(env, m->addr, m->size, FinalizeBuffer, m, &ab);
  if (status != napi_ok) {
    MappingUnref(m);
    if (!env.IsExceptionPending())
      Napi::Error::New(env, "napi_create_external_arraybuffer failed").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Value(env, ab);
}

// collectGarbage(): a full collection of the calling thread's isolate, now. N-API has no call for it;
// what it has is the external memory count, and V8 collects everything at once when that count jumps
// past its hard limit (half the old generation's maximum size). So the count jumps by 1 TiB, past any
// such limit, and comes back: nothing is allocated, and the count is as it was.
Napi::Value CollectGarbage(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t jump = (int64_t)1 << 40;
  int64_t now;
  napi_adjust_external_memory(env, jump, &now);
  napi_adjust_external_memory(env, -jump, &now);
  return env.Undefined();
}

// mappingFaults(id) -> SIGBUS faults absorbed in this mapping (0 for anonymous memory). Nonzero: the
// file behind it shrank, and the mapping now holds private zero pages.
Napi::Value MappingFaults(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, id, "mapping id", 0, UINT32_MAX)
  std::lock_guard<std::mutex> lock(RegistryMutex());
  Mapping* m = FindMappingLocked((uint32_t)id);
  if (m == nullptr) return NativeFail(env, EBADF, "mapping", IdDetail((double)id));
  return Napi::Number::New(env, (double)GuardFaults(m->guard));
}

Napi::Value MappingSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, id, "mapping id", 0, UINT32_MAX)
  std::lock_guard<std::mutex> lock(RegistryMutex());
  Mapping* m = FindMappingLocked((uint32_t)id);
  if (m == nullptr) return NativeFail(env, EBADF, "mapping", IdDetail((double)id));
  return Napi::Number::New(env, (double)m->size);
}

// munmap(id): the id dies now; the pages become zero pages now; the range goes with the last ref.
Napi::Value Munmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, id, "mapping id", 0, UINT32_MAX)
  Registry& r = Reg();
  Mapping* m;
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    m = FindMappingLocked((uint32_t)id);
    if (m == nullptr) return NativeFail(env, EBADF, "mapping", IdDetail((double)id));
    uint32_t slot = m->id & (kMaxSlots - 1);
    r.slots[slot].id = 0;
    r.slots[slot].mapping = nullptr;
    r.freeSlots.push_back(slot);
    // Detach the guest pages: stale views and in-flight syscalls now see private zero pages. If this
    // fails (ENOMEM), the old pages simply stay mapped until the last reference goes: still no fault.
    (void)mmap(m->addr, m->span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  }
  MappingUnref(m);
  return env.Undefined();
}

}  // namespace

std::mutex& RegistryMutex() { return Reg().mutex; }

Mapping* FindMappingLocked(uint32_t id) {
  Registry& r = Reg();
  uint32_t slot = id & (kMaxSlots - 1);
  if (slot >= r.slots.size()) return nullptr;
  const Slot& s = r.slots[slot];
  return (s.id == id && id != 0) ? s.mapping : nullptr;
}

void MappingUnref(Mapping* m) {
  if (m->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    GuardRemove(m->guard);  // nothing can touch the range now; unguard it before it can be reused
    munmap(m->addr, m->span);
    delete m;
  }
}

void RegisterMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("mmapAnonymous", Napi::Function::New(env, MmapAnonymous, "mmapAnonymous"));
  exports.Set("mappingBuffer", Napi::Function::New(env, MappingBuffer, "mappingBuffer"));
  exports.Set("mappingSize", Napi::Function::New(env, MappingSize, "mappingSize"));
  exports.Set("collectGarbage", Napi::Function::New(env, CollectGarbage, "collectGarbage"));
  exports.Set("mappingFaults", Napi::Function::New(env, MappingFaults, "mappingFaults"));
  exports.Set("munmap", Napi::Function::New(env, Munmap, "munmap"));
  RegisterGuard(env, exports);
}

}  // namespace lgnet
