// userfault.cc: userfaultfd for postcopy live migration (vhost-user POSTCOPY_ADVISE/LISTEN/END).
//
// In a postcopy migration the destination runs the guest before all of its memory has arrived. The
// pages still missing are holes in the shared memory file; a back-end thread that touches one must
// wait until the front-end has fetched it, not read a zero page. So lgnet registers its mappings of
// guest memory with a userfaultfd and hands that fd to the front-end, which reads the faults, fetches
// the pages into the shared file and wakes the waiting thread (UFFDIO_WAKE on the same fd).
//
// The fd comes from /dev/userfaultfd (USERFAULTFD_IOC_NEW, Linux 6.1+), opened before the jail: the
// jail denies the userfaultfd system call, and a process without CAP_SYS_PTRACE could only make one
// that handles user-mode faults, while lgnet's tap I/O touches guest memory from the kernel
// (readv/writev, io_uring). The device fd's permissions decide who may have one.
//
// Front-end side (tests, the harness): userfaultRead and userfaultWake serve a fault.
#include "common.h"
#include "registry.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC 0xAA
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif

namespace lgnet {
namespace {

// Looks up a live mapping's range; false when the id is gone.
bool MappingRange(uint32_t id, uintptr_t* addr, size_t* span) {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  Mapping* m = FindMappingLocked(id);
  if (m == nullptr) return false;
  *addr = (uintptr_t)m->addr;
  *span = m->span;
  return true;
}

// userfaultfdDevice() -> fd of /dev/userfaultfd (O_RDWR | O_CLOEXEC).
Napi::Value UserfaultfdDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (fd < 0) return NativeFail(env, errno, "open", "/dev/userfaultfd");
  return Napi::Number::New(env, fd);
}

// userfaultfdNew(deviceFd) -> a new userfaultfd (O_CLOEXEC | O_NONBLOCK), its API handshake done.
Napi::Value UserfaultfdNew(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, dev)
  int fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return NativeFail(env, errno, "ioctl", "USERFAULTFD_IOC_NEW on fd " + std::to_string(dev));
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = 0;
  if (ioctl(fd, UFFDIO_API, &api) < 0) {
    int err = errno;
    close(fd);
    return NativeFail(env, err, "ioctl", "UFFDIO_API");
  }
  return Napi::Number::New(env, fd);
}

// userfaultRegister(uffd, mappingId) -> the mapping's address: missing-page faults in its whole
// extent now wait on uffd.
Napi::Value UserfaultRegister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, uffd)
  REQUIRE_ARGUMENT_INTEGER(1, id, "mapping id", 0, UINT32_MAX)
  uintptr_t addr;
  size_t span;
  if (!MappingRange((uint32_t)id, &addr, &span)) return NativeFail(env, EBADF, "mapping", "mapping id " + std::to_string(id));
  struct uffdio_register reg = {};
  reg.range.start = addr;
  reg.range.len = span;
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
    return NativeFail(env, errno, "ioctl", "UFFDIO_REGISTER of mapping id " + std::to_string(id));
  return Napi::Number::New(env, (double)addr);
}

// userfaultUnregister(uffd, mappingId): the mapping's faults no longer wait, and a thread waiting in
// one now retries it. A mapping already released is nothing to do.
Napi::Value UserfaultUnregister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, uffd)
  REQUIRE_ARGUMENT_INTEGER(1, id, "mapping id", 0, UINT32_MAX)
  uintptr_t addr;
  size_t span;
  if (!MappingRange((uint32_t)id, &addr, &span)) return env.Undefined();
  struct uffdio_range range = {addr, span};
  if (ioctl(uffd, UFFDIO_UNREGISTER, &range) < 0)
    return NativeFail(env, errno, "ioctl", "UFFDIO_UNREGISTER of mapping id " + std::to_string(id));
  return env.Undefined();
}

// userfaultRead(uffd) -> the address of the next missing-page fault, or -1 when none is pending.
// Other events (none are asked for) are skipped.
Napi::Value UserfaultRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, uffd)
  for (;;) {
    struct uffd_msg msg;
    ssize_t n = read(uffd, &msg, sizeof msg);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return Napi::Number::New(env, -1);
    if (n < 0) return NativeFail(env, errno, "read", "userfaultfd " + std::to_string(uffd));
    if (n != (ssize_t)sizeof msg) return NativeFail(env, EIO, "read", "short userfaultfd message");
    if (msg.event == UFFD_EVENT_PAGEFAULT) return Napi::Number::New(env, (double)msg.arg.pagefault.address);
  }
}

// userfaultWake(uffd, address, length): threads waiting on a fault in the range retry it.
Napi::Value UserfaultWake(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, uffd)
  REQUIRE_ARGUMENT_INTEGER(1, addr, "address", 0, (int64_t)kMaxSafeInteger)
  REQUIRE_ARGUMENT_INTEGER(2, len, "length", 1, (int64_t)kMaxSafeInteger)
  struct uffdio_range range = {(uint64_t)addr, (uint64_t)len};
  if (ioctl(uffd, UFFDIO_WAKE, &range) < 0) return NativeFail(env, errno, "ioctl", "UFFDIO_WAKE");
  return env.Undefined();
}

}  // namespace

void RegisterUserfault(Napi::Env env, Napi::Object exports) {
  exports.Set("userfaultfdDevice", Napi::Function::New(env, UserfaultfdDevice, "userfaultfdDevice"));
  exports.Set("userfaultfdNew", Napi::Function::New(env, UserfaultfdNew, "userfaultfdNew"));
  exports.Set("userfaultRegister", Napi::Function::New(env, UserfaultRegister, "userfaultRegister"));
  exports.Set("userfaultUnregister", Napi::Function::New(env, UserfaultUnregister, "userfaultUnregister"));
  exports.Set("userfaultRead", Napi::Function::New(env, UserfaultRead, "userfaultRead"));
  exports.Set("userfaultWake", Napi::Function::New(env, UserfaultWake, "userfaultWake"));
}

}  // namespace lgnet
