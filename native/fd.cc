// fd.cc: plain file-descriptor calls shared by every fd kind: close, O_NONBLOCK, read, write.
#include "common.h"

#include <fcntl.h>
#include <unistd.h>

namespace lgnet {
namespace {

std::string FdDetail(int fd) { return "fd " + std::to_string(fd); }

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  // On Linux the fd is released even when close() reports EINTR, so never retry.
  if (close(fd) < 0 && errno != EINTR) return NativeFail(env, errno, "close", FdDetail(fd));
  return env.Undefined();
}

// (fd, on): one bit of the fd's flags (F_GETFL/F_SETFL or F_GETFD/F_SETFD) on or off.
Napi::Value SetFlag(const Napi::CallbackInfo& info, int get, int set, int bit) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  REQUIRE_ARGUMENT_BOOLEAN(1, on, "on")
  int flags = fcntl(fd, get);
  if (flags < 0) return NativeFail(env, errno, "fcntl", FdDetail(fd));
  int wanted = on ? (flags | bit) : (flags & ~bit);
  if (wanted != flags && fcntl(fd, set, wanted) < 0) return NativeFail(env, errno, "fcntl", FdDetail(fd));
  return env.Undefined();
}

Napi::Value SetNonblocking(const Napi::CallbackInfo& info) { return SetFlag(info, F_GETFL, F_SETFL, O_NONBLOCK); }

// setCloexec(fd, on): FD_CLOEXEC, for an fd another process handed down (a child must not inherit it).
Napi::Value SetCloexec(const Napi::CallbackInfo& info) { return SetFlag(info, F_GETFD, F_SETFD, FD_CLOEXEC); }

// fdRead(fd, buf) -> bytes, 0 on EOF, -1 on EAGAIN.
Napi::Value FdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  REQUIRE_ARGUMENT_BYTES(1, buf, "buf")
  ssize_t n;
  do n = read(fd, buf.Data(), buf.ByteLength());
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    return NativeFail(env, errno, "read", FdDetail(fd));
  }
  return Napi::Number::New(env, (double)n);
}

// fdWrite(fd, buf) -> bytes, -1 on EAGAIN.
Napi::Value FdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  REQUIRE_ARGUMENT_BYTES(1, buf, "buf")
  ssize_t n;
  do n = write(fd, buf.Data(), buf.ByteLength());
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    return NativeFail(env, errno, "write", FdDetail(fd));
  }
  return Napi::Number::New(env, (double)n);
}

}  // namespace

void RegisterFd(Napi::Env env, Napi::Object exports) {
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("setNonblocking", Napi::Function::New(env, SetNonblocking, "setNonblocking"));
  exports.Set("setCloexec", Napi::Function::New(env, SetCloexec, "setCloexec"));
  exports.Set("fdRead", Napi::Function::New(env, FdRead, "fdRead"));
  exports.Set("fdWrite", Napi::Function::New(env, FdWrite, "fdWrite"));
}

}  // namespace lgnet
