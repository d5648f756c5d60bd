// addon.cc: module init for lgnet.node, the only code in lgnet that makes system calls.
//
// The addon is loaded once per thread environment (main thread and each worker_thread); the shared
// library, and so the mapping registry in memory.cc, is one per process. Per-environment state (the
// NativeError class) lives in instance data (errors.cc) and is freed at environment teardown; FdPoller
// handles close themselves through async cleanup hooks (poller.cc).
#include "common.h"

namespace lgnet {
namespace {

// The cheapest possible call: measures the N-API crossing (scripts/bench/native.ts).
Napi::Value Nop(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("nop", Napi::Function::New(env, Nop, "nop"));
  RegisterErrors(env, exports);
  RegisterFd(env, exports);
  RegisterEventfd(env, exports);
  RegisterMemory(env, exports);
  RegisterTap(env, exports);
  RegisterBatch(env, exports);
  RegisterUring(env, exports);
  RegisterWait(env, exports);
  RegisterPoller(env, exports);
  RegisterUnixSocket(env, exports);
  RegisterNetns(env, exports);
  RegisterHardening(env, exports);
  RegisterUserfault(env, exports);
  return exports;
}

}  // namespace lgnet

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return lgnet::Init(env, exports); }

NODE_API_MODULE(lgnet, InitModule)
