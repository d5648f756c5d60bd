// eventfd.cc: kick and call eventfds (one per virtqueue direction), and control eventfds that wake
// workers. A blocking eventfdRead is the cheapest way for a worker_thread to sleep (DESIGN.md,
// "Measured limits").
#include "common.h"

#include <sys/eventfd.h>
#include <unistd.h>

namespace lgnet {
namespace {

// eventfdCreate(initval, nonblocking, semaphore) -> fd (always EFD_CLOEXEC).
Napi::Value EventfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, initval, "initval", 0, UINT32_MAX)
  REQUIRE_ARGUMENT_BOOLEAN(1, nonblocking, "nonblocking")
  REQUIRE_ARGUMENT_BOOLEAN(2, semaphore, "semaphore")
  int flags = EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0) | (semaphore ? EFD_SEMAPHORE : 0);
  int fd = eventfd((unsigned int)initval, flags);
  if (fd < 0) return NativeFail(env, errno, "eventfd", "initval " + std::to_string(initval));
  return Napi::Number::New(env, fd);
}

// eventfdRead(fd) -> counter value (blocks on a blocking fd; 0 on EAGAIN).
Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  uint64_t value = 0;
  ssize_t n;
  do n = read(fd, &value, sizeof value);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Number::New(env, 0);
    return NativeFail(env, errno, "read", "eventfd " + std::to_string(fd));
  }
  if (n != (ssize_t)sizeof value) return NativeFail(env, EINVAL, "read", "fd " + std::to_string(fd) + " is not an eventfd");
  return Napi::Number::New(env, (double)value);
}

// eventfdWrite(fd, value) adds value (1 .. 2^53-1) to the counter.
Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  REQUIRE_ARGUMENT_INTEGER(1, value, "value", 1, (int64_t)kMaxSafeInteger)
  uint64_t v = (uint64_t)value;
  ssize_t n;
  do n = write(fd, &v, sizeof v);
  while (n < 0 && errno == EINTR);
  if (n < 0) return NativeFail(env, errno, "write", "eventfd " + std::to_string(fd));
  if (n != (ssize_t)sizeof v) return NativeFail(env, EINVAL, "write", "fd " + std::to_string(fd) + " is not an eventfd");
  return env.Undefined();
}

}  // namespace

void RegisterEventfd(Napi::Env env, Napi::Object exports) {
  exports.Set("eventfdCreate", Napi::Function::New(env, EventfdCreate, "eventfdCreate"));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead, "eventfdRead"));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite, "eventfdWrite"));
}

}  // namespace lgnet
