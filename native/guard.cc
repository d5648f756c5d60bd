// guard.cc: lgnet does not die when guest memory vanishes under it.
//
// Guest memory is a file the front-end owns, mapped MAP_SHARED. Touching a page that lies past the
// file's end raises SIGBUS, and a front-end can ftruncate the file at any time. memory.cc seals memfds
// against shrinking where it can (F_SEAL_SHRINK), but a memfd made without MFD_ALLOW_SEALING, a tmpfs
// file or a hugetlbfs file cannot be sealed, and hugetlbfs also raises SIGBUS when its pool runs dry.
// Without this file the first access after that kills the process, and every guest it serves with it.
//
//   a thread reads or writes guest memory (JS over an ArrayBuffer, or native code)
//      │  the kernel finds no page: SIGBUS, si_code BUS_ADRERR, si_addr = the byte
//      ▼
//   OnSigbus ── si_addr inside a guarded mapping? ──no──▶ Chain: the previous disposition, as if lgnet
//      │ yes                                               were not there (a real crash stays a crash)
//      ▼
//   mmap(MAP_FIXED|MAP_PRIVATE|MAP_ANONYMOUS) over the whole mapping: private zero pages, nothing else
//   guard's faults += 1, process-wide count += 1 (a word every thread can read without a call)
//      │  return: the instruction runs again and reads zeros
//      ▼
//   JS notices the count move (device/worker.ts once per pass, the vhost-user connection after each
//   message), finds the mapping, and breaks the device: NEEDS_RESET, and over vhost-user the
//   connection is dropped (VU_MEM_FAULT). The next connection maps fresh memory.
//
// Only the faulting mapping is replaced, and only with zeros: no byte of another region or of lgnet's
// own memory becomes visible through it. The guard table is a fixed array read lock-free by the
// handler (a seqlock per slot); it is written under a mutex by GuardAdd/GuardRemove, never from the
// handler. A range is guarded from just after mmap until its last reference is dropped (registry.h),
// so a thread can only fault on a guarded range while it holds a reference, and the handler's
// MAP_FIXED never lands on a range that was unmapped and reused.
//
// No alternate signal stack: a guest-memory fault happens in ordinary code with ordinary stack room,
// and the handler needs a few hundred bytes. SA_ONSTACK uses a thread's alternate stack if it has one.
// The jail allows what the handler does: mmap without PROT_EXEC, rt_sigreturn, and for the crash path
// rt_sigaction and tgkill to this process (sandbox/seccomp-policy.ts).
#include "guard.h"

#include "common.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

namespace lgnet {
namespace {

constexpr uint32_t kGuards = 65536;  // as many as the registry has mappings

struct Guard {
  // Even: stable; odd: being written. The handler reads start/end between two equal even values.
  std::atomic<uint32_t> seq;
  std::atomic<uintptr_t> start;
  std::atomic<uintptr_t> end;  // 0: free
  std::atomic<uint32_t> faults;
};

// Static storage: zero-initialized before any code runs, never destroyed, always mapped.
Guard g_guards[kGuards];
// Guards [0, g_high) may be in use; the handler scans only those.
std::atomic<uint32_t> g_high{0};
// Writers only (GuardAdd, GuardRemove).
std::mutex g_mutex;
// Faults absorbed by any guard, process-wide. Every thread reads it through an external ArrayBuffer.
alignas(64) std::atomic<uint32_t> g_faultCount{0};
static_assert(sizeof(std::atomic<uint32_t>) == 4 && std::atomic<uint32_t>::is_always_lock_free,
              "the fault counter is read from JS as an Int32Array");

struct sigaction g_previous;
std::atomic<bool> g_installed{false};
uintptr_t g_page = 4096;  // set at install (sysconf is not for signal handlers)

void OnSigbus(int sig, siginfo_t* info, void* uctx);

// What SIGBUS did before lgnet: call it (a handler), or restore it and let it act (default, ignore).
void Chain(int sig, siginfo_t* info, void* uctx) {
  const struct sigaction& p = g_previous;
  if (p.sa_flags & SA_SIGINFO) {
    if (p.sa_sigaction != nullptr) return p.sa_sigaction(sig, info, uctx);
  } else if (p.sa_handler != SIG_DFL && p.sa_handler != SIG_IGN) {
    return p.sa_handler(sig);
  }
  bool sent = info == nullptr || info->si_code <= 0;  // kill/tgkill/sigqueue: no instruction to re-run
  if (sent && p.sa_handler == SIG_IGN) return;         // it was ignored before lgnet, so it is now
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGBUS, &dfl, nullptr);  // a fault cannot be ignored: SIG_IGN acts as the default
  // A fault: returning runs the instruction again, which faults again and kills the process with
  // SIGBUS at the right address (and a core where allowed). A sent signal is raised again: blocked
  // while this handler runs, it is delivered as soon as it returns.
  if (sent) raise(SIGBUS);
}

// Replaces [lo, lo + len) with private zero pages. async-signal-safe in practice: one system call.
bool ZeroOver(uintptr_t lo, size_t len) {
  void* r = mmap((void*)lo, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  return r != MAP_FAILED;
}

void OnSigbus(int sig, siginfo_t* info, void* uctx) {
  int savedErrno = errno;
  // BUS_ADRERR: no page behind the address (a truncated file, an empty hugetlbfs pool). BUS_OBJERR:
  // the object failed. Hardware memory errors (BUS_MCEERR_*) and misaligned accesses are not ours.
  if (info != nullptr && (info->si_code == BUS_ADRERR || info->si_code == BUS_OBJERR)) {
    uintptr_t a = (uintptr_t)info->si_addr;
    uint32_t n = g_high.load(std::memory_order_acquire);
    for (uint32_t i = 0; i < n; i++) {
      Guard& g = g_guards[i];
      uint32_t q = g.seq.load(std::memory_order_acquire);
      if (q & 1) continue;  // being claimed or released: nothing can touch its range now
      uintptr_t lo = g.start.load(std::memory_order_relaxed);
      uintptr_t hi = g.end.load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (g.seq.load(std::memory_order_relaxed) != q || a < lo || a >= hi) continue;
      // The whole mapping if the kernel lets us; else at least the faulting page (a later fault on
      // another page comes back here).
      if (ZeroOver(lo, hi - lo) || ZeroOver(a & ~(g_page - 1), g_page)) {
        g.faults.fetch_add(1, std::memory_order_relaxed);
        g_faultCount.fetch_add(1, std::memory_order_release);
        errno = savedErrno;
        return;
      }
      break;  // cannot replace the pages: let it crash as it would have
    }
  }
  errno = savedErrno;
  Chain(sig, info, uctx);
}

void Install() {
  static std::once_flag once;
  std::call_once(once, [] {
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0) g_page = (uintptr_t)page;
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = OnSigbus;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    // A second copy of lgnet in the process installs its own handler over this one and chains to it.
    if (sigaction(SIGBUS, &sa, &g_previous) == 0) g_installed.store(true);
  });
}

// memoryGuard() -> { installed, faults, guards }: whether SIGBUS still reaches lgnet's handler (an
// embedder that installs its own afterwards takes it away), faults absorbed, guards in use.
Napi::Value MemoryGuard(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct sigaction cur;
  bool ours = sigaction(SIGBUS, nullptr, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == OnSigbus;
  uint32_t used = 0;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    uint32_t n = g_high.load(std::memory_order_relaxed);
    for (uint32_t i = 0; i < n; i++)
      if (g_guards[i].end.load(std::memory_order_relaxed) != 0) used++;
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("installed", Napi::Boolean::New(env, g_installed.load() && ours));
  o.Set("faults", Napi::Number::New(env, g_faultCount.load(std::memory_order_acquire)));
  o.Set("guards", Napi::Number::New(env, used));
  return o;
}

// faultCounter() -> a 4-byte ArrayBuffer over the process-wide fault count, for this thread.
Napi::Value FaultCounter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  napi_value ab;
  napi_status status = napi_create_external_arraybuffer(env, (void*)&g_faultCount, sizeof g_faultCount, nullptr, nullptr, &ab);
  if (status != napi_ok) {
    if (!env.IsExceptionPending()) Napi::Error::New(env, "napi_create_external_arraybuffer failed").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Value(env, ab);
}

}  // namespace

int32_t GuardAdd(void* addr, size_t span) {
  std::lock_guard<std::mutex> lock(g_mutex);
  uint32_t n = g_high.load(std::memory_order_relaxed);
  uint32_t i = 0;
  while (i < n && g_guards[i].end.load(std::memory_order_relaxed) != 0) i++;
  if (i == kGuards) return -1;
  Guard& g = g_guards[i];
  uint32_t q = g.seq.load(std::memory_order_relaxed);
  g.seq.store(q + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  g.start.store((uintptr_t)addr, std::memory_order_relaxed);
  g.end.store((uintptr_t)addr + span, std::memory_order_relaxed);
  g.faults.store(0, std::memory_order_relaxed);
  g.seq.store(q + 2, std::memory_order_release);
  if (i == n) g_high.store(n + 1, std::memory_order_release);
  return (int32_t)i;
}

void GuardRemove(int32_t guard) {
  if (guard < 0 || (uint32_t)guard >= kGuards) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  Guard& g = g_guards[guard];
  uint32_t q = g.seq.load(std::memory_order_relaxed);
  g.seq.store(q + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  g.start.store(0, std::memory_order_relaxed);
  g.end.store(0, std::memory_order_relaxed);
  g.seq.store(q + 2, std::memory_order_release);
}

uint32_t GuardFaults(int32_t guard) {
  if (guard < 0 || (uint32_t)guard >= kGuards) return 0;
  return g_guards[guard].faults.load(std::memory_order_acquire);
}

void RegisterGuard(Napi::Env env, Napi::Object exports) {
  Install();
  exports.Set("memoryGuard", Napi::Function::New(env, MemoryGuard, "memoryGuard"));
  exports.Set("faultCounter", Napi::Function::New(env, FaultCounter, "faultCounter"));
}

}  // namespace lgnet
