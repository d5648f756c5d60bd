// wait.cc: where a worker sleeps (device/loops.ts calls it; DESIGN.md, "Kick suppression while
// busy"). poll() over a few fds, and waitKick(), which closes the "re-enable notifications, then
// re-check avail.idx" race in one call, for TX and RX alike:
//
//   write signalFd ─▶ seq_cst fence ─▶ re-read avail.idx
//                                             │
//       ┌── == lastSeen: no new buffers ──────┴──── != lastSeen (or lastSeen -1): the guest has buffers ──┐
//       ▼                                                                                                 ▼
//   poll(kick, extras…) ─▶ drain kick ─▶ KICK              no backendFd (TX): return AVAIL, no sleep
//                                                          backendFd (RX): poll(backend, extras…) ─▶ AVAIL|BACKEND
//
// So an RX worker wakes when the backend is readable and the guest has buffers, or when the guest
// adds buffers while the device waits for them; never for a readable backend with nowhere to put it.
#include "common.h"
#include "registry.h"

#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

namespace lgnet {
namespace {

constexpr uint32_t kWakeAvail = 1, kWakeKick = 2, kWakeBackend = 4, kWakeExtra0 = 8;
constexpr size_t kMaxPollFds = 31;
constexpr size_t kMaxExtraFds = 28;  // bits 3..30 of the result

int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

// ppoll() with EINTR retried against the original deadline; timeoutNs < 0 waits forever. Nanoseconds,
// because a held interrupt (device/coalesce.ts) waits well under a millisecond.
// Returns the ppoll() result or -1 with errno set.
int PollForNs(struct pollfd* pfds, size_t n, int64_t timeoutNs) {
  int64_t deadline = timeoutNs < 0 ? -1 : NowNs() + timeoutNs;
  for (;;) {
    struct timespec ts, *tsp = nullptr;
    if (deadline >= 0) {
      int64_t left = deadline - NowNs();
      if (left < 0) left = 0;
      ts.tv_sec = (time_t)(left / 1000000000);
      ts.tv_nsec = (long)(left % 1000000000);
      tsp = &ts;
    }
    int r = ppoll(pfds, (nfds_t)n, tsp, nullptr);
    if (r >= 0 || errno != EINTR) return r;
  }
}

int PollFor(struct pollfd* pfds, size_t n, int64_t timeoutMs) {
  return PollForNs(pfds, n, timeoutMs < 0 ? -1 : timeoutMs * 1000000);
}

// Throws EBADF if poll reported a closed fd.
bool CheckNval(Napi::Env env, const struct pollfd* pfds, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (pfds[i].revents & POLLNVAL) {
      ThrowNativeError(env, EBADF, "poll", "fd " + std::to_string(pfds[i].fd) + " is not open");
      return false;
    }
  return true;
}

constexpr short kReadyMask = POLLIN | POLLERR | POLLHUP;

// poll(fds: Int32Array, timeoutMs) -> bit i set when fds[i] is readable, errored or hung up.
// Negative fds are ignored.
Napi::Value Poll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_TYPED(0, fdsArr, int32_t, napi_int32_array, "fds")
  REQUIRE_ARGUMENT_INTEGER(1, timeoutMs, "timeoutMs", -1, INT32_MAX)
  size_t n = fdsArr.ElementLength();
  if (n > kMaxPollFds) LGNET_THROW_RANGE("poll takes at most 31 fds");
  struct pollfd pfds[kMaxPollFds];
  for (size_t i = 0; i < n; i++) pfds[i] = {fdsArr[i], POLLIN, 0};
  int r = PollFor(pfds, n, timeoutMs);
  if (r < 0) return NativeFail(env, errno, "poll", std::to_string(n) + " fds");
  if (!CheckNval(env, pfds, n)) return env.Undefined();
  uint32_t mask = 0;
  for (size_t i = 0; i < n; i++)
    if (pfds[i].revents & kReadyMask) mask |= 1u << i;
  return Napi::Number::New(env, mask);
}

// waitKick(kickFd, mappingId, offset, lastSeen, timeoutMs, extraFds: Int32Array | undefined, signalFd,
//          backendFd)
// lastSeen -1 (only with a backend fd): the caller already knows the guest has buffers.
Napi::Value WaitKick(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, kickFd, "kickFd", -1, INT32_MAX)
  REQUIRE_ARGUMENT_INTEGER(1, id, "mapping id", 0, UINT32_MAX)
  REQUIRE_ARGUMENT_INTEGER(2, offset, "offset", 0, (int64_t)kMaxSafeInteger)
  REQUIRE_ARGUMENT_INTEGER(3, lastSeen, "lastSeen", -1, UINT16_MAX)
  // Fractional milliseconds allowed: a held interrupt's deadline is in microseconds.
  REQUIRE_ARGUMENT_NUMBER(4, timeoutMs, "timeoutMs")
  if (!(timeoutMs == -1 || (timeoutMs >= 0 && timeoutMs <= (double)INT32_MAX)))
    LGNET_THROW_RANGE("timeoutMs must be -1 or in [0, " + std::to_string(INT32_MAX) + "]");
  int64_t timeoutNs = timeoutMs < 0 ? -1 : (int64_t)(timeoutMs * 1e6);
  struct pollfd pfds[1 + kMaxExtraFds];
  size_t nExtra = 0;
  if (info.Length() > 5 && !info[5].IsUndefined() && !info[5].IsNull()) {
    REQUIRE_ARGUMENT_TYPED(5, extraArr, int32_t, napi_int32_array, "extraFds")
    nExtra = extraArr.ElementLength();
    if (nExtra > kMaxExtraFds) LGNET_THROW_RANGE("waitKick takes at most 28 extra fds");
    for (size_t i = 0; i < nExtra; i++) pfds[1 + i] = {extraArr[i], POLLIN, 0};
  }
  REQUIRE_ARGUMENT_INTEGER(6, signalFd, "signalFd", -1, INT32_MAX)
  REQUIRE_ARGUMENT_INTEGER(7, backendFd, "backendFd", -1, INT32_MAX)
  if (lastSeen < 0 && backendFd < 0) LGNET_THROW_RANGE("lastSeen -1 needs a backend fd to wait on");

  Mapping* m;
  {
    std::lock_guard<std::mutex> lock(RegistryMutex());
    m = FindMappingLocked((uint32_t)id);
    if (m == nullptr) return NativeFail(env, EBADF, "mapping", "mapping id " + std::to_string(id));
    if (m->size < 2 || (uint64_t)offset > m->size - 2)
      return NativeFail(env, EFAULT, "mapping",
                        "u16 at offset " + std::to_string(offset) + " lies outside mapping " + std::to_string(id) +
                            " of " + std::to_string(m->size) + " bytes");
    MappingRef(m);
  }

  // 1. The pending interrupt, just before sleeping (lguest: before the tap read would block, on RX).
  //    The guest refills RX only once it hears about what it got, so this comes first.
  if (signalFd >= 0) {
    uint64_t one = 1;
    ssize_t n;
    do n = write((int)signalFd, &one, sizeof one);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno != EAGAIN) {
      int err = errno;
      MappingUnref(m);
      return NativeFail(env, err, "write", "signal eventfd " + std::to_string(signalFd));
    }
  }
  // 2. Full fence, then 3. re-read avail.idx (little-endian u16). This is where the sleep race closes.
  //    The caller re-enabled notifications (cleared VRING_USED_F_NO_NOTIFY, or wrote avail_event =
  //    lastSeen; virtio 1.2 §2.7.10) before this call. A driver publishes avail.idx, then
  //    (after its own barrier) reads whether to kick. With the fence between our store and our load,
  //    at least one side sees the other: either the load below sees the new avail.idx, or the driver
  //    sees notifications on and kicks, and the kick waits in the eventfd's counter for the poll below.
  //    No buffer can be added unseen between the check and the sleep.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool hasBuffers = lastSeen < 0;
  if (!hasBuffers) {
    const uint8_t* p = m->addr + offset;
    uint16_t idx;
    if (((uintptr_t)p & 1) == 0) {
      idx = __atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_SEQ_CST);
    } else {
      std::memcpy(&idx, p, sizeof idx);
    }
    hasBuffers = idx != (uint16_t)lastSeen;
  }
  MappingUnref(m);
  if (hasBuffers && backendFd < 0) return Napi::Number::New(env, kWakeAvail);

  // 4. Sleep. With buffers (RX), on the backend: buffers the device has not used cannot go away (only
  //    the device consumes them), so they need no watching, and the backend's fd is level-triggered,
  //    so a frame that arrived after the read that found nothing still wakes us. Without buffers, on
  //    the kick only: a readable backend with nowhere to put its frames would wake us over and over;
  //    the frames wait in the kernel until the guest gives room.
  int waitFd = hasBuffers ? (int)backendFd : (int)kickFd;
  pfds[0] = {waitFd, POLLIN, 0};  // a negative fd is ignored by poll
  int r = PollForNs(pfds, 1 + nExtra, timeoutNs);
  if (r < 0) return NativeFail(env, errno, "poll", std::string(hasBuffers ? "backend fd " : "kick fd ") + std::to_string(waitFd));
  if (!CheckNval(env, pfds, 1 + nExtra)) return env.Undefined();
  uint32_t wake = hasBuffers ? kWakeAvail : 0;
  if (waitFd >= 0 && (pfds[0].revents & kReadyMask)) {
    if (hasBuffers) {
      wake |= kWakeBackend;  // left for the backend's reader
    } else {
      uint64_t value;
      ssize_t n;
      do n = read(waitFd, &value, sizeof value);
      while (n < 0 && errno == EINTR);
      if (n < 0 && errno != EAGAIN) return NativeFail(env, errno, "read", "kick eventfd " + std::to_string(waitFd));
      wake |= kWakeKick;
    }
  }
  for (size_t i = 0; i < nExtra; i++)
    if (pfds[1 + i].revents & kReadyMask) wake |= kWakeExtra0 << i;
  return Napi::Number::New(env, wake);
}

}  // namespace

void RegisterWait(Napi::Env env, Napi::Object exports) {
  exports.Set("poll", Napi::Function::New(env, Poll, "poll"));
  exports.Set("waitKick", Napi::Function::New(env, WaitKick, "waitKick"));
}

}  // namespace lgnet
