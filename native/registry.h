// registry.h: the process-wide mapping registry (guest memory regions and scratch buffers).
//
// A mapping id names one mmap'd range. Ids are (generation << 16 | slot): a released id is never
// valid again until its slot's 16-bit generation wraps, and a lookup is an index plus a compare.
//
//   registry ──ref──▶ Mapping ◀──ref── each external ArrayBuffer (any thread)
//                        ▲
//                        └──ref── a batch in flight (pinned for the duration of its syscalls)
//
// munmap(id) removes the id at once and replaces the pages with anonymous zero pages (MAP_FIXED), so
// stale views read zeros; the address range is unmapped only when the last reference goes, so it is
// never reused while anything can still touch it. A file mapping is guarded against SIGBUS (guard.h)
// for as long as its range exists.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

namespace lgnet {

struct Mapping {
  uint8_t* addr;
  size_t size;
  uint32_t id;
  std::atomic<int64_t> refs;
  // The mapping's whole extent: size rounded up to its page size (a hugetlbfs page for hugetlbfs).
  size_t span;
  // Its SIGBUS guard (guard.h), or -1 for anonymous memory, which cannot fault.
  int32_t guard;
};

// The registry lock; hold it around FindMappingLocked and while taking references.
std::mutex& RegistryMutex();
// The mapping for a live id, or nullptr. Caller holds RegistryMutex().
Mapping* FindMappingLocked(uint32_t id);
// Take / drop a reference. MappingRef is called with the lock held; MappingUnref may be called
// without it (it unmaps and frees on the last reference).
inline void MappingRef(Mapping* m) { m->refs.fetch_add(1, std::memory_order_relaxed); }
void MappingUnref(Mapping* m);

}  // namespace lgnet
