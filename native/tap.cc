// tap.cc: the tap backend's fd: open /dev/net/tun as IFF_TAP|IFF_NO_PI (optionally IFF_VNET_HDR and
// IFF_MULTI_QUEUE), and the ioctls that match the tap to what the guest negotiated: the
// virtio_net_hdr size (10 or 12 bytes) and the offloads (TUN_F_*). Frames then move with batch.cc.
#include "common.h"

#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

namespace lgnet {
namespace {

// tapOpen(name, vnetHdr, multiQueue, nonblocking) -> { fd, name }
Napi::Value TapOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_STRING(0, name, "name")
  REQUIRE_ARGUMENT_BOOLEAN(1, vnetHdr, "vnetHdr")
  REQUIRE_ARGUMENT_BOOLEAN(2, multiQueue, "multiQueue")
  REQUIRE_ARGUMENT_BOOLEAN(3, nonblocking, "nonblocking")
  if (name.size() >= IFNAMSIZ) LGNET_THROW_RANGE("tap name must be at most 15 bytes");
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0));
  if (fd < 0) return NativeFail(env, errno, "open", "/dev/net/tun");
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnetHdr ? IFF_VNET_HDR : 0) | (multiQueue ? IFF_MULTI_QUEUE : 0);
  std::memcpy(ifr.ifr_name, name.data(), name.size());
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    close(fd);
    return NativeFail(env, err, "ioctl(TUNSETIFF)", "tap '" + name + "'");
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("fd", Napi::Number::New(env, fd));
  result.Set("name", Napi::String::New(env, std::string(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ))));
  return result;
}

// tapAttach(fd, name, vnetHdr, multiQueue): TUNSETIFF again on an fd tapOpen made, whose interface
// was deleted since (its reads and writes then fail with EBADFD). The kernel attaches the fd to the
// interface of that name, or creates it when the caller may (CAP_NET_ADMIN).
Napi::Value TapAttach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  REQUIRE_ARGUMENT_STRING(1, name, "name")
  REQUIRE_ARGUMENT_BOOLEAN(2, vnetHdr, "vnetHdr")
  REQUIRE_ARGUMENT_BOOLEAN(3, multiQueue, "multiQueue")
  if (name.empty() || name.size() >= IFNAMSIZ) LGNET_THROW_RANGE("tap name must be 1 to 15 bytes");
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnetHdr ? IFF_VNET_HDR : 0) | (multiQueue ? IFF_MULTI_QUEUE : 0);
  std::memcpy(ifr.ifr_name, name.data(), name.size());
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) return NativeFail(env, errno, "ioctl(TUNSETIFF)", "tap '" + name + "' on fd " + std::to_string(fd));
  return env.Undefined();
}

Napi::Value TapSetVnetHdrSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  REQUIRE_ARGUMENT_INTEGER(1, size, "size", 0, INT32_MAX)
  int sz = (int)size;
  if (ioctl(fd, TUNSETVNETHDRSZ, &sz) < 0)
    return NativeFail(env, errno, "ioctl(TUNSETVNETHDRSZ)", "fd " + std::to_string(fd) + " size " + std::to_string(sz));
  return env.Undefined();
}

Napi::Value TapSetOffload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  REQUIRE_ARGUMENT_INTEGER(1, flags, "flags", 0, UINT32_MAX)
  if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)flags) < 0)
    return NativeFail(env, errno, "ioctl(TUNSETOFFLOAD)", "fd " + std::to_string(fd) + " flags 0x" + std::to_string(flags));
  return env.Undefined();
}

// tapSetQueue(fd, attach): TUNSETQUEUE on one queue of a multi-queue tap. A detached queue takes no
// frames from the host: the kernel steers to the queues still attached, and drops what the detached
// one held. Attaching it again puts it back in the kernel's choice.
Napi::Value TapSetQueue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  REQUIRE_ARGUMENT_BOOLEAN(1, attach, "attach")
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = attach ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
  if (ioctl(fd, TUNSETQUEUE, &ifr) < 0)
    return NativeFail(env, errno, "ioctl(TUNSETQUEUE)", std::string(attach ? "attach" : "detach") + " fd " + std::to_string(fd));
  return env.Undefined();
}

// tapInfo(fd) -> { name, flags }: TUNGETIFF, the interface an fd is attached to and its IFF flags (as
// the interface has them: IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE, IFF_PERSIST, ...), for an
// fd another process opened. A detached queue still names its interface, with IFF_DETACH_QUEUE.
// EBADFD: a tun fd attached to nothing; ENOTTY or EINVAL: not a tun fd.
Napi::Value TapInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  if (ioctl(fd, TUNGETIFF, &ifr) < 0) return NativeFail(env, errno, "ioctl(TUNGETIFF)", "fd " + std::to_string(fd));
  Napi::Object result = Napi::Object::New(env);
  result.Set("name", Napi::String::New(env, std::string(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ))));
  result.Set("flags", Napi::Number::New(env, (uint16_t)ifr.ifr_flags));
  return result;
}

Napi::Value TapGetFeatures(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  unsigned int features = 0;
  if (ioctl(fd, TUNGETFEATURES, &features) < 0)
    return NativeFail(env, errno, "ioctl(TUNGETFEATURES)", "fd " + std::to_string(fd));
  return Napi::Number::New(env, features);
}

#ifndef TUNGETDEVNETNS
#define TUNGETDEVNETNS _IO('T', 227)
#endif

// tapNetnsInode(fd) -> the inode of the network namespace the tap's interface lives in (what
// /proc/self/ns/net's inode is for this process's), or -1 when the kernel will not say: EPERM
// (TUNGETDEVNETNS asks CAP_NET_ADMIN over that namespace), or ENOTTY/EINVAL before Linux 5.2.
Napi::Value TapNetnsInode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  int ns = ioctl(fd, TUNGETDEVNETNS);
  if (ns < 0) {
    if (errno == EPERM || errno == ENOTTY || errno == EINVAL) return Napi::Number::New(env, -1);
    return NativeFail(env, errno, "ioctl(TUNGETDEVNETNS)", "fd " + std::to_string(fd));
  }
  struct stat st;
  int rc = fstat(ns, &st);
  int err = errno;
  close(ns);
  if (rc < 0) return NativeFail(env, err, "fstat", "the namespace of tap fd " + std::to_string(fd));
  return Napi::Number::New(env, (double)st.st_ino);
}

// macvtapOpen(name, nonblocking) -> { fd, path }: the character device of the macvtap `name` (in
// the calling thread's namespace), /dev/tap<ifindex>, opened read-write. A macvtap's queue is an open
// of that device (each open one more queue), with IFF_VNET_HDR on. The node is checked to be the
// interface's own: ifindexes repeat across namespaces, so a /dev/tapN made for another namespace's
// macvtap is refused (ENXIO), as is a node that is not a tap character device (ENOTTY).
Napi::Value MacvtapOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_STRING(0, name, "name")
  REQUIRE_ARGUMENT_BOOLEAN(1, nonblocking, "nonblocking")
  if (name.empty() || name.size() >= IFNAMSIZ) LGNET_THROW_RANGE("interface name must be 1 to 15 bytes");
  unsigned int index = if_nametoindex(name.c_str());
  if (index == 0) return NativeFail(env, errno, "if_nametoindex", "'" + name + "'");
  std::string path = "/dev/tap" + std::to_string(index);
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOCTTY | (nonblocking ? O_NONBLOCK : 0));
  if (fd < 0) return NativeFail(env, errno, "open", path + " (the character device of macvtap '" + name + "')");
  auto fail = [&](int err, const char* syscall, const std::string& detail) {
    close(fd);
    return NativeFail(env, err, syscall, detail);
  };
  struct stat st;
  if (fstat(fd, &st) < 0) return fail(errno, "fstat", path);
  if (!S_ISCHR(st.st_mode)) return fail(ENOTTY, "fstat", path + " is not a character device");
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  if (ioctl(fd, TUNGETIFF, &ifr) < 0) return fail(errno, "ioctl(TUNGETIFF)", path + " (not a macvtap's device?)");
  std::string on(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
  if (on != name)
    return fail(ENXIO, "ioctl(TUNGETIFF)", path + " is the device of '" + on + "', not of '" + name + "' (an interface of another namespace with the same index)");
  Napi::Object result = Napi::Object::New(env);
  result.Set("fd", Napi::Number::New(env, fd));
  result.Set("path", Napi::String::New(env, path));
  return result;
}

// tapHwAddr(fd) -> Buffer(6): SIOCGIFHWADDR on a tap's or a macvtap's fd, the interface's address.
Napi::Value TapHwAddr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) return NativeFail(env, errno, "ioctl(SIOCGIFHWADDR)", "fd " + std::to_string(fd));
  return Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<const uint8_t*>(ifr.ifr_hwaddr.sa_data), 6);
}

// tapSetHwAddr(fd, mac): SIOCSIFHWADDR on a macvtap's fd, giving the macvtap (its lower device's
// filter with it) a new address, as libvirt gives a direct attachment the guest's. The kernel asks no
// capability of the fd's holder. EADDRINUSE: another macvlan of the same lower device has it;
// EADDRNOTAVAIL: not a unicast address; ENOLINK: the macvtap is gone.
Napi::Value TapSetHwAddr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FD(0, fd)
  REQUIRE_ARGUMENT_BYTES(1, mac, "mac")
  if (mac.ElementLength() != 6) LGNET_THROW_RANGE("mac must be 6 bytes");
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
  std::memcpy(ifr.ifr_hwaddr.sa_data, mac.Data(), 6);
  if (ioctl(fd, SIOCSIFHWADDR, &ifr) < 0) return NativeFail(env, errno, "ioctl(SIOCSIFHWADDR)", "fd " + std::to_string(fd));
  return env.Undefined();
}

}  // namespace

void RegisterTap(Napi::Env env, Napi::Object exports) {
  exports.Set("tapOpen", Napi::Function::New(env, TapOpen, "tapOpen"));
  exports.Set("tapAttach", Napi::Function::New(env, TapAttach, "tapAttach"));
  exports.Set("tapSetVnetHdrSize", Napi::Function::New(env, TapSetVnetHdrSize, "tapSetVnetHdrSize"));
  exports.Set("tapSetOffload", Napi::Function::New(env, TapSetOffload, "tapSetOffload"));
  exports.Set("tapGetFeatures", Napi::Function::New(env, TapGetFeatures, "tapGetFeatures"));
  exports.Set("tapSetQueue", Napi::Function::New(env, TapSetQueue, "tapSetQueue"));
  exports.Set("tapInfo", Napi::Function::New(env, TapInfo, "tapInfo"));
  exports.Set("tapNetnsInode", Napi::Function::New(env, TapNetnsInode, "tapNetnsInode"));
  exports.Set("macvtapOpen", Napi::Function::New(env, MacvtapOpen, "macvtapOpen"));
  exports.Set("tapHwAddr", Napi::Function::New(env, TapHwAddr, "tapHwAddr"));
  exports.Set("tapSetHwAddr", Napi::Function::New(env, TapSetHwAddr, "tapSetHwAddr"));
}

}  // namespace lgnet
