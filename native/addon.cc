// Placeholder module init; replaced by the native layer.
#include <napi.h>
static Napi::Object Init(Napi::Env env, Napi::Object exports) { return exports; }
NODE_API_MODULE(lgnet, Init)
