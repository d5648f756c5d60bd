// common.h: shared declarations for the lgnet addon (native/ is the only layer that makes syscalls).
//
// Every exported function opens with guard macros that re-check its arguments (TypeScript checks them
// first, in native/index.ts); a failed guard throws TypeError or RangeError and returns. System call
// failures throw the JS NativeError class that native/errors.ts hands over once at load (see errors.cc).
#pragma once

#include <napi.h>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <string>

namespace lgnet {

// Largest integer a JS number holds exactly.
constexpr double kMaxSafeInteger = 9007199254740991.0;

// Throws NativeError(errno, syscall, detail) in env (falls back to a plain Error if JS never called
// initialize()). `err` is a positive errno value.
void ThrowNativeError(Napi::Env env, int err, const char* syscall, const std::string& detail);
// Same, and returns the value a Napi callback should return after throwing.
Napi::Value NativeFail(Napi::Env env, int err, const char* syscall, const std::string& detail);

// Module parts; each registers its exports.
void RegisterErrors(Napi::Env env, Napi::Object exports);
void RegisterFd(Napi::Env env, Napi::Object exports);
void RegisterEventfd(Napi::Env env, Napi::Object exports);
void RegisterMemory(Napi::Env env, Napi::Object exports);
void RegisterTap(Napi::Env env, Napi::Object exports);
void RegisterBatch(Napi::Env env, Napi::Object exports);
void RegisterUring(Napi::Env env, Napi::Object exports);
void RegisterWait(Napi::Env env, Napi::Object exports);
void RegisterPoller(Napi::Env env, Napi::Object exports);
void RegisterUnixSocket(Napi::Env env, Napi::Object exports);
void RegisterNetns(Napi::Env env, Napi::Object exports);
void RegisterHardening(Napi::Env env, Napi::Object exports);
void RegisterUserfault(Napi::Env env, Napi::Object exports);

inline bool IsInteger(double v) { return std::isfinite(v) && std::trunc(v) == v; }

}  // namespace lgnet

// ---- guard macros ---------------------------------------------------------------------------------
// Each declares `var` from info[i] or throws and returns undefined. They expect `info` and `env` in
// scope.

#define LGNET_THROW_TYPE(msg)                                   \
  do {                                                          \
    Napi::TypeError::New(env, msg).ThrowAsJavaScriptException(); \
    return env.Undefined();                                     \
  } while (0)

#define LGNET_THROW_RANGE(msg)                                   \
  do {                                                           \
    Napi::RangeError::New(env, msg).ThrowAsJavaScriptException(); \
    return env.Undefined();                                      \
  } while (0)

#define REQUIRE_ARGUMENT_NUMBER(i, var, what)                               \
  if (info.Length() <= (i) || !info[i].IsNumber())                          \
    LGNET_THROW_TYPE(std::string(what) + " must be a number");              \
  double var = info[i].As<Napi::Number>().DoubleValue();

// An integer in [lo, hi] (both within the safe-integer range).
#define REQUIRE_ARGUMENT_INTEGER(i, var, what, lo, hi)                                      \
  REQUIRE_ARGUMENT_NUMBER(i, var##_d, what)                                                 \
  if (!lgnet::IsInteger(var##_d) || var##_d < (double)(lo) || var##_d > (double)(hi))       \
    LGNET_THROW_RANGE(std::string(what) + " must be an integer in [" + std::to_string(lo) + \
                      ", " + std::to_string(hi) + "]");                                     \
  int64_t var = (int64_t)var##_d;

#define REQUIRE_ARGUMENT_FD(i, var) \
  REQUIRE_ARGUMENT_INTEGER(i, var##_64, "fd", 0, INT32_MAX) int var = (int)var##_64;

#define REQUIRE_ARGUMENT_BOOLEAN(i, var, what)                                 \
  if (info.Length() <= (i) || !info[i].IsBoolean())                            \
    LGNET_THROW_TYPE(std::string(what) + " must be a boolean");                \
  bool var = info[i].As<Napi::Boolean>().Value();

#define REQUIRE_ARGUMENT_STRING(i, var, what)                                  \
  if (info.Length() <= (i) || !info[i].IsString())                             \
    LGNET_THROW_TYPE(std::string(what) + " must be a string");                 \
  std::string var = info[i].As<Napi::String>().Utf8Value();                   \
  if (var.find('\0') != std::string::npos)                                     \
    LGNET_THROW_TYPE(std::string(what) + " must not contain NUL");

#define REQUIRE_ARGUMENT_FUNCTION(i, var, what)                                \
  if (info.Length() <= (i) || !info[i].IsFunction())                           \
    LGNET_THROW_TYPE(std::string(what) + " must be a function");               \
  Napi::Function var = info[i].As<Napi::Function>();

// A typed array of the given napi type; declares `var` (Napi::TypedArrayOf<ctype>).
#define REQUIRE_ARGUMENT_TYPED(i, var, ctype, napitype, what)                                  \
  if (info.Length() <= (i) || !info[i].IsTypedArray() ||                                       \
      info[i].As<Napi::TypedArray>().TypedArrayType() != napitype)                             \
    LGNET_THROW_TYPE(std::string(what) + " must be a " #ctype " typed array");                \
  Napi::TypedArrayOf<ctype> var = info[i].As<Napi::TypedArrayOf<ctype>>();

#define REQUIRE_ARGUMENT_BYTES(i, var, what) \
  REQUIRE_ARGUMENT_TYPED(i, var, uint8_t, napi_uint8_array, what)
