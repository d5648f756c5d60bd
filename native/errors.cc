// errors.cc: how C++ reports a failed system call to JS.
//
// native/errors.ts defines `NativeError`; native/index.ts passes the class to `initialize()` once per
// thread (each worker_thread loads the addon into its own environment). ThrowNativeError constructs it
// with (errno, syscall, detail) so `code` and the message are built in one place, in TypeScript.
#include "common.h"

#include <cstring>

namespace lgnet {
namespace {

struct AddonData {
  Napi::FunctionReference nativeError;
};

AddonData* Data(Napi::Env env) {
  AddonData* data = env.GetInstanceData<AddonData>();
  if (data == nullptr) {
    data = new AddonData();
    env.SetInstanceData(data);  // deleted by node-addon-api's default finalizer at env teardown
  }
  return data;
}

Napi::Value Initialize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  REQUIRE_ARGUMENT_FUNCTION(0, ctor, "NativeError class")
  Data(env)->nativeError = Napi::Persistent(ctor);
  return env.Undefined();
}

}  // namespace

void ThrowNativeError(Napi::Env env, int err, const char* syscall, const std::string& detail) {
  AddonData* data = Data(env);
  if (!data->nativeError.IsEmpty()) {
    Napi::Object e = data->nativeError.New({Napi::Number::New(env, err), Napi::String::New(env, syscall),
                                            Napi::String::New(env, detail)});
    if (env.IsExceptionPending()) return;  // the constructor itself threw; let that propagate
    Napi::Error(env, e).ThrowAsJavaScriptException();
    return;
  }
  // initialize() not called (only possible when the raw binding is used directly).
  Napi::Error e = Napi::Error::New(env, std::string(syscall) + " failed: " + strerror(err) + " (" + detail + ")");
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  e.ThrowAsJavaScriptException();
}

Napi::Value NativeFail(Napi::Env env, int err, const char* syscall, const std::string& detail) {
  ThrowNativeError(env, err, syscall, detail);
  return env.Undefined();
}

void RegisterErrors(Napi::Env env, Napi::Object exports) {
  exports.Set("initialize", Napi::Function::New(env, Initialize, "initialize"));
}

}  // namespace lgnet
