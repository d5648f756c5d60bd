// hardening.cc: privilege-shedding primitives for sandbox/jail.ts, which applies them in order
// (DESIGN.md, "Sandbox"): chroot, setgroups/setresgid/setresuid, rlimits, no_new_privs, seccomp.
// glibc applies the set*id calls to every thread of the process; seccomp uses TSYNC for the same.
#include "common.h"

#include <grp.h>
#include <sched.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <vector>

namespace lgnet {
namespace {

Napi::Value SetNoNewPrivs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return NativeFail(env, errno, "prctl", "PR_SET_NO_NEW_PRIVS");
  return env.Undefined();
}

// prctl(PR_SET_DUMPABLE, 0): no core dump, and /proc/<pid>/mem and ptrace only for CAP_SYS_PTRACE.
// prctl(PR_SET_NAME): the calling thread's name, as top -H, perf and /proc/<pid>/task/*/comm show it.
Napi::Value SetThreadName(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_STRING(0, name, "name")
  if (name.empty() || name.size() > 15) LGNET_THROW_RANGE("a thread name is 1 to 15 bytes");
  if (prctl(PR_SET_NAME, name.c_str(), 0, 0, 0) < 0) return NativeFail(env, errno, "prctl", "PR_SET_NAME");
  return env.Undefined();
}

// sched_setaffinity(0, …): the calling thread only (tid 0), so a queue worker pins itself and no other.
Napi::Value SetThreadAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_TYPED(0, cpus, uint32_t, napi_uint32_array, "cpus")
  if (cpus.ElementLength() == 0) LGNET_THROW_RANGE("cpus: at least one CPU");
  cpu_set_t set;
  CPU_ZERO(&set);
  for (size_t i = 0; i < cpus.ElementLength(); i++) {
    if (cpus[i] >= CPU_SETSIZE) LGNET_THROW_RANGE("cpus: each CPU number below " + std::to_string(CPU_SETSIZE));
    CPU_SET(cpus[i], &set);
  }
  if (sched_setaffinity(0, sizeof set, &set) < 0) return NativeFail(env, errno, "sched_setaffinity", "the calling thread");
  return env.Undefined();
}

// sched_getaffinity(0, …) → the CPUs the calling thread may run on, ascending.
Napi::Value ThreadAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) < 0) return NativeFail(env, errno, "sched_getaffinity", "the calling thread");
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &set)) out.Set(n++, Napi::Number::New(env, c));
  return out;
}

Napi::Value SetNotDumpable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) return NativeFail(env, errno, "prctl", "PR_SET_DUMPABLE");
  return env.Undefined();
}

// seccompInstall(filter: Uint8Array of struct sock_filter, tsync)
Napi::Value SeccompInstall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_BYTES(0, filter, "filter")
  REQUIRE_ARGUMENT_BOOLEAN(1, tsync, "tsync")
  size_t len = filter.ByteLength();
  if (len == 0 || len % sizeof(struct sock_filter) != 0 || len / sizeof(struct sock_filter) > BPF_MAXINSNS)
    LGNET_THROW_RANGE("filter must be 1..4096 instructions of 8 bytes");
  // Copy to aligned memory: the Uint8Array may start at any byte offset.
  std::vector<struct sock_filter> insns(len / sizeof(struct sock_filter));
  std::memcpy(insns.data(), filter.Data(), len);
  struct sock_fprog prog = {(unsigned short)insns.size(), insns.data()};
  long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, tsync ? SECCOMP_FILTER_FLAG_TSYNC : 0, &prog);
  if (r < 0) return NativeFail(env, errno, "seccomp", std::to_string(insns.size()) + " instructions");
  if (r > 0) {
    // TSYNC failed: r is the id of a thread that could not take the filter; nothing was installed.
    ThrowNativeError(env, EBUSY, "seccomp",
                     "thread " + std::to_string(r) +
                         " cannot synchronize to the filter (it runs a different filter); nothing was installed");
    if (env.IsExceptionPending()) {
      Napi::Error e = env.GetAndClearPendingException();
      e.Set("tid", Napi::Number::New(env, (double)r));
      e.ThrowAsJavaScriptException();
    }
    return env.Undefined();
  }
  return env.Undefined();
}

Napi::Value SetResUid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, r, "ruid", -1, UINT32_MAX - 1)
  REQUIRE_ARGUMENT_INTEGER(1, e, "euid", -1, UINT32_MAX - 1)
  REQUIRE_ARGUMENT_INTEGER(2, s, "suid", -1, UINT32_MAX - 1)
  if (setresuid((uid_t)r, (uid_t)e, (uid_t)s) < 0) return NativeFail(env, errno, "setresuid", std::to_string(r) + "," + std::to_string(e) + "," + std::to_string(s));
  return env.Undefined();
}

Napi::Value SetResGid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, r, "rgid", -1, UINT32_MAX - 1)
  REQUIRE_ARGUMENT_INTEGER(1, e, "egid", -1, UINT32_MAX - 1)
  REQUIRE_ARGUMENT_INTEGER(2, s, "sgid", -1, UINT32_MAX - 1)
  if (setresgid((gid_t)r, (gid_t)e, (gid_t)s) < 0) return NativeFail(env, errno, "setresgid", std::to_string(r) + "," + std::to_string(e) + "," + std::to_string(s));
  return env.Undefined();
}

// setgroups(gids: Uint32Array)
Napi::Value SetGroups(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_TYPED(0, gids, uint32_t, napi_uint32_array, "gids")
  if (gids.ElementLength() > 65536) LGNET_THROW_RANGE("at most 65536 groups");
  std::vector<gid_t> list(gids.Data(), gids.Data() + gids.ElementLength());
  if (setgroups(list.size(), list.data()) < 0) return NativeFail(env, errno, "setgroups", std::to_string(list.size()) + " groups");
  return env.Undefined();
}

// Resource numbers are passed from TS (RLIMIT_* values are the same on every Linux arch we build).
Napi::Value SetRlimit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, resource, "resource", 0, RLIM_NLIMITS - 1)
  REQUIRE_ARGUMENT_NUMBER(1, soft, "soft")
  REQUIRE_ARGUMENT_NUMBER(2, hard, "hard")
  auto conv = [](double v, rlim_t* out) {
    if (v == INFINITY) { *out = RLIM_INFINITY; return true; }
    if (!IsInteger(v) || v < 0 || v > kMaxSafeInteger) return false;
    *out = (rlim_t)v;
    return true;
  };
  struct rlimit rl;
  if (!conv(soft, &rl.rlim_cur) || !conv(hard, &rl.rlim_max)) LGNET_THROW_RANGE("limits must be non-negative integers or Infinity");
  if (setrlimit((int)resource, &rl) < 0) return NativeFail(env, errno, "setrlimit", "resource " + std::to_string(resource));
  return env.Undefined();
}

Napi::Value GetRlimit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_INTEGER(0, resource, "resource", 0, RLIM_NLIMITS - 1)
  struct rlimit rl;
  if (getrlimit((int)resource, &rl) < 0) return NativeFail(env, errno, "getrlimit", "resource " + std::to_string(resource));
  Napi::Object o = Napi::Object::New(env);
  o.Set("soft", Napi::Number::New(env, rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur));
  o.Set("hard", Napi::Number::New(env, rl.rlim_max == RLIM_INFINITY ? INFINITY : (double)rl.rlim_max));
  return o;
}

Napi::Value Chroot(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_STRING(0, path, "path")
  if (chroot(path.c_str()) < 0) return NativeFail(env, errno, "chroot", "'" + path + "'");
  if (chdir("/") < 0) return NativeFail(env, errno, "chdir", "/ after chroot");
  return env.Undefined();
}

}  // namespace

void RegisterHardening(Napi::Env env, Napi::Object exports) {
  exports.Set("setNoNewPrivs", Napi::Function::New(env, SetNoNewPrivs, "setNoNewPrivs"));
  exports.Set("setNotDumpable", Napi::Function::New(env, SetNotDumpable, "setNotDumpable"));
  exports.Set("setThreadName", Napi::Function::New(env, SetThreadName, "setThreadName"));
  exports.Set("setThreadAffinity", Napi::Function::New(env, SetThreadAffinity, "setThreadAffinity"));
  exports.Set("threadAffinity", Napi::Function::New(env, ThreadAffinity, "threadAffinity"));
  exports.Set("seccompInstall", Napi::Function::New(env, SeccompInstall, "seccompInstall"));
  exports.Set("setresuid", Napi::Function::New(env, SetResUid, "setresuid"));
  exports.Set("setresgid", Napi::Function::New(env, SetResGid, "setresgid"));
  exports.Set("setgroups", Napi::Function::New(env, SetGroups, "setgroups"));
  exports.Set("setrlimit", Napi::Function::New(env, SetRlimit, "setrlimit"));
  exports.Set("getrlimit", Napi::Function::New(env, GetRlimit, "getrlimit"));
  exports.Set("chroot", Napi::Function::New(env, Chroot, "chroot"));
}

}  // namespace lgnet
