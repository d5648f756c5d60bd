// unix-socket.cc: AF_UNIX stream sockets with fd passing (SCM_RIGHTS), for the vhost-user channel:
// memory regions, kick/call eventfds and log fds arrive as ancillary data.
#include "common.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>

namespace lgnet {
namespace {

constexpr int kScmMaxFd = 253;  // the kernel's SCM_MAX_FD

bool FillAddr(Napi::Env env, const std::string& path, struct sockaddr_un* addr) {
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr->sun_path) {
    Napi::RangeError::New(env, "unix socket path must be 1.." + std::to_string(sizeof addr->sun_path - 1) + " bytes")
        .ThrowAsJavaScriptException();
    return false;
  }
  std::memcpy(addr->sun_path, path.data(), path.size());
  return true;
}

Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_STRING(0, path, "path")
  REQUIRE_ARGUMENT_INTEGER(1, backlog, "backlog", 1, 4096)
  struct sockaddr_un addr;
  if (!FillAddr(env, path, &addr)) return env.Undefined();
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return NativeFail(env, errno, "socket", "AF_UNIX");
  if (bind(fd, (struct sockaddr*)&addr, sizeof addr) < 0) {
    int err = errno;
    close(fd);
    return NativeFail(env, err, "bind", "'" + path + "'");
  }
  if (listen(fd, (int)backlog) < 0) {
    int err = errno;
    close(fd);
    return NativeFail(env, err, "listen", "'" + path + "'");
  }
  return Napi::Number::New(env, fd);
}

// socketInfo(fd) -> { domain, type, listening, path }: what a socket another process handed over is
// (SO_DOMAIN, SO_TYPE, SO_ACCEPTCONN), and for AF_UNIX the path it is bound to (getsockname; an abstract
// name as "@name", unbound ""). ENOTSOCK: not a socket.
Napi::Value SocketInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  int domain = 0, type = 0, listening = 0;
  socklen_t len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) return NativeFail(env, errno, "getsockopt(SO_DOMAIN)", "fd " + std::to_string(fd));
  len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) return NativeFail(env, errno, "getsockopt(SO_TYPE)", "fd " + std::to_string(fd));
  len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0) return NativeFail(env, errno, "getsockopt(SO_ACCEPTCONN)", "fd " + std::to_string(fd));
  std::string path;
  if (domain == AF_UNIX) {
    struct sockaddr_un addr;
    std::memset(&addr, 0, sizeof addr);
    socklen_t alen = sizeof addr;
    if (getsockname(fd, (struct sockaddr*)&addr, &alen) < 0) return NativeFail(env, errno, "getsockname", "fd " + std::to_string(fd));
    size_t n = alen > offsetof(struct sockaddr_un, sun_path) ? alen - offsetof(struct sockaddr_un, sun_path) : 0;
    if (n > 0 && addr.sun_path[0] == '\0') path = "@" + std::string(addr.sun_path + 1, n - 1);
    else path = std::string(addr.sun_path, strnlen(addr.sun_path, n));
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("domain", Napi::Number::New(env, domain));
  result.Set("type", Napi::Number::New(env, type));
  result.Set("listening", Napi::Boolean::New(env, listening != 0));
  result.Set("path", Napi::String::New(env, path));
  return result;
}

// unixAccept(fd) -> connected fd (CLOEXEC), or -1 on EAGAIN.
Napi::Value UnixAccept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  int c;
  do c = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
  while (c < 0 && errno == EINTR);
  if (c < 0) {
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    return NativeFail(env, errno, "accept4", "fd " + std::to_string(fd));
  }
  return Napi::Number::New(env, c);
}

// A new AF_UNIX socket of `type` connected to addr (alen bytes of it), or a thrown NativeError.
Napi::Value ConnectNew(Napi::Env env, int type, const struct sockaddr_un& addr, socklen_t alen, const std::string& path) {
  int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  if (fd < 0) return NativeFail(env, errno, "socket", (type & 0xf) == SOCK_DGRAM ? "AF_UNIX datagram" : "AF_UNIX");
  int r;
  do r = connect(fd, (const struct sockaddr*)&addr, alen);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    int err = errno;
    close(fd);
    return NativeFail(env, err, "connect", "'" + path + "'");
  }
  return Napi::Number::New(env, fd);
}

Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_STRING(0, path, "path")
  struct sockaddr_un addr;
  if (!FillAddr(env, path, &addr)) return env.Undefined();
  return ConnectNew(env, SOCK_STREAM, addr, sizeof addr, path);
}

// unixDgramConnect(path) -> fd: a nonblocking AF_UNIX datagram socket connected to path, or to the
// abstract name after '@' (the forms systemd's NOTIFY_SOCKET takes). Nonblocking, so that a receiver
// whose queue is full costs a lost message (EAGAIN from sendMsg), never a stalled main thread.
Napi::Value UnixDgramConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_STRING(0, path, "path")
  struct sockaddr_un addr;
  if (!FillAddr(env, path, &addr)) return env.Undefined();
  socklen_t alen = sizeof addr;
  if (path[0] == '@') {
    if (path.size() < 2) LGNET_THROW_RANGE("an abstract socket name needs at least one byte after '@'");
    addr.sun_path[0] = '\0';
    alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path.size());
  }
  return ConnectNew(env, SOCK_DGRAM | SOCK_NONBLOCK, addr, alen, path);
}

Napi::Value UnixSocketpair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return NativeFail(env, errno, "socketpair", "AF_UNIX");
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, sv[0]));
  a.Set(1u, Napi::Number::New(env, sv[1]));
  return a;
}

Napi::Value Shutdown(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  if (shutdown(fd, SHUT_RDWR) < 0) return NativeFail(env, errno, "shutdown", "fd " + std::to_string(fd));
  return env.Undefined();
}

// sendMsg(fd, data, fds: Int32Array) -> bytes sent, -1 on EAGAIN. MSG_NOSIGNAL.
Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  REQUIRE_ARGUMENT_BYTES(1, data, "data")
  REQUIRE_ARGUMENT_TYPED(2, fdsArr, int32_t, napi_int32_array, "fds")
  size_t nfds = fdsArr.ElementLength();
  if (nfds > (size_t)kScmMaxFd) LGNET_THROW_RANGE("at most 253 fds per message");
  if (nfds > 0 && data.ByteLength() == 0) LGNET_THROW_RANGE("fds need at least one data byte to travel with");
  struct iovec iov = {data.Data(), data.ByteLength()};
  struct msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kScmMaxFd)];
  if (nfds > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    std::memcpy(CMSG_DATA(c), fdsArr.Data(), sizeof(int) * nfds);
  }
  ssize_t n;
  do n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    return NativeFail(env, errno, "sendmsg", "fd " + std::to_string(fd) + " with " + std::to_string(nfds) + " fds");
  }
  return Napi::Number::New(env, (double)n);
}

// recvMsg(fd, buf, maxFds) -> { bytes (-1 on EAGAIN, 0 on EOF), fds, ctrunc }. Received fds are
// CLOEXEC; those beyond maxFds are closed here and reported through ctrunc.
Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  REQUIRE_ARGUMENT_BYTES(1, buf, "buf")
  REQUIRE_ARGUMENT_INTEGER(2, maxFds, "maxFds", 0, kScmMaxFd)
  struct iovec iov = {buf.Data(), buf.ByteLength()};
  struct msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  // Room for the kernel's maximum, so that nothing is dropped silently; the cap is applied below.
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kScmMaxFd)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  Napi::Object result = Napi::Object::New(env);
  Napi::Array fds = Napi::Array::New(env);
  bool ctrunc = false;  // the kernel could not pass every fd (typically RLIMIT_NOFILE)
  bool excess = false;  // more fds than maxFds came (the extras are closed here)
  if (n < 0) {
    if (errno != EAGAIN) return NativeFail(env, errno, "recvmsg", "fd " + std::to_string(fd));
  } else {
    ctrunc = (msg.msg_flags & MSG_CTRUNC) != 0;
    uint32_t kept = 0;
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char* p = CMSG_DATA(c);
      for (size_t i = 0; i < count; i++) {
        int rfd;
        std::memcpy(&rfd, p + i * sizeof(int), sizeof rfd);
        if (kept < (uint32_t)maxFds) {
          fds.Set(kept++, Napi::Number::New(env, rfd));
        } else {
          close(rfd);
          excess = true;
        }
      }
    }
  }
  result.Set("bytes", Napi::Number::New(env, n < 0 ? -1 : (double)n));
  result.Set("fds", fds);
  result.Set("ctrunc", Napi::Boolean::New(env, ctrunc));
  result.Set("excess", Napi::Boolean::New(env, excess));
  return result;
}

}  // namespace

void RegisterUnixSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("unixListen", Napi::Function::New(env, UnixListen, "unixListen"));
  exports.Set("unixAccept", Napi::Function::New(env, UnixAccept, "unixAccept"));
  exports.Set("socketInfo", Napi::Function::New(env, SocketInfo, "socketInfo"));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("unixDgramConnect", Napi::Function::New(env, UnixDgramConnect, "unixDgramConnect"));
  exports.Set("unixSocketpair", Napi::Function::New(env, UnixSocketpair, "unixSocketpair"));
  exports.Set("shutdown", Napi::Function::New(env, Shutdown, "shutdown"));
  exports.Set("sendMsg", Napi::Function::New(env, SendMsg, "sendMsg"));
  exports.Set("recvMsg", Napi::Function::New(env, RecvMsg, "recvMsg"));
}

}  // namespace lgnet
