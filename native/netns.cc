// netns.cc: test and sandbox helpers around network namespaces: switch the calling thread into a
// namespace (setns affects only that thread) to open a tap or a packet socket there, then switch
// back; and AF_PACKET sockets that see every frame on one interface.
#include "common.h"

#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <sched.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <cstring>

namespace lgnet {
namespace {

// netnsEnter(path) -> fd of the thread's previous network namespace.
Napi::Value NetnsEnter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_STRING(0, path, "path")
  int prev = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (prev < 0) return NativeFail(env, errno, "open", "/proc/thread-self/ns/net");
  int target = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (target < 0) {
    int err = errno;
    close(prev);
    return NativeFail(env, err, "open", "'" + path + "'");
  }
  int r = setns(target, CLONE_NEWNET);
  int err = errno;
  close(target);
  if (r < 0) {
    close(prev);
    return NativeFail(env, err, "setns", "'" + path + "'");
  }
  return Napi::Number::New(env, prev);
}

// netnsLeave(prevFd): back to the namespace netnsEnter saved, and close its fd.
Napi::Value NetnsLeave(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, prev)
  if (setns(prev, CLONE_NEWNET) < 0) return NativeFail(env, errno, "setns", "previous namespace fd " + std::to_string(prev));
  close(prev);
  return env.Undefined();
}

// packetOpen(ifname) -> AF_PACKET SOCK_RAW ETH_P_ALL socket bound to ifname (in the calling thread's
// namespace), CLOEXEC and nonblocking. Its receive buffer is raised to 8 MiB where the caller may
// (SO_RCVBUFFORCE, CAP_NET_ADMIN): a tap's skbs take ~1-2 KiB each, so the default buffer drops a
// capture of a few hundred frames that is read only after the burst.
Napi::Value PacketOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_STRING(0, ifname, "ifname")
  if (ifname.empty() || ifname.size() >= IFNAMSIZ) LGNET_THROW_RANGE("interface name must be 1..15 bytes");
  unsigned int index = if_nametoindex(ifname.c_str());
  if (index == 0) return NativeFail(env, errno, "if_nametoindex", "'" + ifname + "'");
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, htons(ETH_P_ALL));
  if (fd < 0) return NativeFail(env, errno, "socket", "AF_PACKET for '" + ifname + "'");
  int rcvbuf = 8 << 20;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0) {
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);  // capped by rmem_max; best effort
  }
  struct sockaddr_ll sll;
  std::memset(&sll, 0, sizeof sll);
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(ETH_P_ALL);
  sll.sll_ifindex = (int)index;
  if (bind(fd, (struct sockaddr*)&sll, sizeof sll) < 0) {
    int err = errno;
    close(fd);
    return NativeFail(env, err, "bind", "AF_PACKET to '" + ifname + "'");
  }
  return Napi::Number::New(env, fd);
}

}  // namespace

void RegisterNetns(Napi::Env env, Napi::Object exports) {
  exports.Set("netnsEnter", Napi::Function::New(env, NetnsEnter, "netnsEnter"));
  exports.Set("netnsLeave", Napi::Function::New(env, NetnsLeave, "netnsLeave"));
  exports.Set("packetOpen", Napi::Function::New(env, PacketOpen, "packetOpen"));
}

}  // namespace lgnet
