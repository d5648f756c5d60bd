// poller.cc: FdPoller, a libuv uv_poll_t on the calling thread's event loop, for the main thread (and
// any worker that runs an event loop) to watch sockets and eventfds without blocking.
//
// The uv handle lives in a PollState that outlives the JS object until libuv's close callback:
//
//   FdPoller (JS object) ──state──▶ PollState { uv_poll_t, env, owner, cleanup hook }
//                        ◀──owner──
//
// close() from JS, the object's finalizer, and environment teardown (an async cleanup hook, so a
// worker can exit with a poller open) all end in one uv_close; the state is freed in its callback.
// While started, the JS object holds a reference to itself so it is not collected mid-watch; it keeps
// the loop alive like any active handle. stop() and close() drop both.
#include "common.h"

#include <uv.h>

#include <mutex>
#include <set>
#include <utility>

namespace lgnet {
namespace {

class FdPoller;

// (loop, fd) pairs with a live poller: libuv keeps one watcher per fd per loop, so a second poller on
// the same fd would silently never fire, and closing either would unhook the other.
std::mutex gWatchedMutex;
std::set<std::pair<uv_loop_t*, int>>& Watched() {
  static auto* watched = new std::set<std::pair<uv_loop_t*, int>>();
  return *watched;
}

struct PollState {
  uv_poll_t handle;
  uv_loop_t* loop;
  int fd;
  napi_env env;
  FdPoller* owner;
  napi_async_cleanup_hook_handle hook = nullptr;
  bool closing = false;
};

void OnClosed(uv_handle_t* h);

void CloseState(PollState* s) {
  if (s->closing) return;
  s->closing = true;
  {
    std::lock_guard<std::mutex> lock(gWatchedMutex);
    Watched().erase({s->loop, s->fd});
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&s->handle), OnClosed);
}

void OnTeardown(napi_async_cleanup_hook_handle, void* arg) { CloseState(static_cast<PollState*>(arg)); }

class FdPoller : public Napi::ObjectWrap<FdPoller> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdPoller",
                       {InstanceMethod<&FdPoller::Start>("start"), InstanceMethod<&FdPoller::Stop>("stop"),
                        InstanceMethod<&FdPoller::Close>("close"), InstanceMethod<&FdPoller::Ref>("ref"),
                        InstanceMethod<&FdPoller::Unref>("unref")});
  }

  // new FdPoller(fd, callback(events, errno))
  FdPoller(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdPoller>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsFunction()) {
      Napi::TypeError::New(env, "FdPoller(fd: number, callback: function)").ThrowAsJavaScriptException();
      return;
    }
    double fdd = info[0].As<Napi::Number>().DoubleValue();
    if (!IsInteger(fdd) || fdd < 0 || fdd > INT32_MAX) {
      Napi::RangeError::New(env, "fd must be an integer in [0, 2147483647]").ThrowAsJavaScriptException();
      return;
    }
    fd_ = (int)fdd;
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      Napi::Error::New(env, "FdPoller: no event loop on this thread").ThrowAsJavaScriptException();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(gWatchedMutex);
      if (!Watched().insert({loop, fd_}).second) {
        ThrowNativeError(env, EEXIST, "uv_poll_init", "fd " + std::to_string(fd_) + " already has an FdPoller on this thread");
        return;
      }
    }
    PollState* s = new PollState();
    s->loop = loop;
    s->fd = fd_;
    s->env = env;
    s->owner = this;
    int r = uv_poll_init(loop, &s->handle, fd_);  // note: libuv sets O_NONBLOCK on the fd
    if (r < 0) {
      delete s;
      {
        std::lock_guard<std::mutex> lock(gWatchedMutex);
        Watched().erase({loop, fd_});
      }
      ThrowNativeError(env, -r, "uv_poll_init", "fd " + std::to_string(fd_));
      return;
    }
    s->handle.data = s;
    uv_unref(reinterpret_cast<uv_handle_t*>(&s->handle));  // ref'd only while started (and ref()'d)
    napi_add_async_cleanup_hook(env, OnTeardown, s, &s->hook);
    state_ = s;
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    context_ = std::make_unique<Napi::AsyncContext>(env, "lgnet.FdPoller", info.This().As<Napi::Object>());
  }

  ~FdPoller() override {
    if (state_ != nullptr) {
      state_->owner = nullptr;
      CloseState(state_);
      state_ = nullptr;
    }
  }

  void Detach() { state_ = nullptr; }
  void Fire(int status, int events);

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    REQUIRE_ARGUMENT_INTEGER(0, events, "events", 1, UV_READABLE | UV_WRITABLE | UV_DISCONNECT)
    if (state_ == nullptr || state_->closing)
      return NativeFail(env, EBADF, "uv_poll_start", "FdPoller for fd " + std::to_string(fd_) + " is closed");
    int r = uv_poll_start(&state_->handle, (int)events, OnPoll);
    if (r < 0) return NativeFail(env, -r, "uv_poll_start", "fd " + std::to_string(fd_));
    if (!started_) {
      started_ = true;
      Napi::ObjectWrap<FdPoller>::Ref();
    }
    if (loopRef_) uv_ref(reinterpret_cast<uv_handle_t*>(&state_->handle));
    return env.Undefined();
  }

  void StopWatching() {
    if (state_ != nullptr && !state_->closing) {
      uv_poll_stop(&state_->handle);
      uv_unref(reinterpret_cast<uv_handle_t*>(&state_->handle));
    }
    if (started_) {
      started_ = false;
      Napi::ObjectWrap<FdPoller>::Unref();
    }
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    StopWatching();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    StopWatching();
    if (state_ != nullptr) {
      state_->owner = nullptr;
      CloseState(state_);
      state_ = nullptr;
    }
    // A closed poller never fires again, so the callback can go now. Keeping it until the finalizer
    // leaks in a cycle V8 cannot see: callback → its closure's objects → an Error whose stack frame has
    // this object as receiver → this C++ object → the callback's strong reference.
    callback_.Reset();
    return info.Env().Undefined();
  }

  // ref()/unref(): whether a started poller keeps the event loop alive (default: yes).
  Napi::Value Ref(const Napi::CallbackInfo& info) {
    loopRef_ = true;
    if (started_ && state_ != nullptr && !state_->closing) uv_ref(reinterpret_cast<uv_handle_t*>(&state_->handle));
    return info.Env().Undefined();
  }
  Napi::Value Unref(const Napi::CallbackInfo& info) {
    loopRef_ = false;
    if (state_ != nullptr && !state_->closing) uv_unref(reinterpret_cast<uv_handle_t*>(&state_->handle));
    return info.Env().Undefined();
  }

  static void OnPoll(uv_poll_t* h, int status, int events) {
    PollState* s = static_cast<PollState*>(h->data);
    if (s->closing || s->owner == nullptr) return;
    s->owner->Fire(status, events);
  }

  int fd_ = -1;
  PollState* state_ = nullptr;
  bool started_ = false;
  bool loopRef_ = true;
  Napi::FunctionReference callback_;
  std::unique_ptr<Napi::AsyncContext> context_;
};

void FdPoller::Fire(int status, int events) {
  Napi::Env env(state_->env);
  Napi::HandleScope scope(env);
  // An error (e.g. the fd hung up in a way epoll reports as EPOLLERR) is delivered as DISCONNECT
  // with the positive errno as the second argument.
  int ev = status < 0 ? (events | UV_DISCONNECT) : events;
  callback_.MakeCallback(Value(), {Napi::Number::New(env, ev), Napi::Number::New(env, status < 0 ? -status : 0)},
                         *context_);
  if (env.IsExceptionPending()) {
    Napi::Error err = env.GetAndClearPendingException();
    napi_fatal_exception(env, err.Value());  // same as a throwing I/O callback: 'uncaughtException'
  }
}

void OnClosed(uv_handle_t* h) {
  PollState* s = static_cast<PollState*>(h->data);
  if (s->owner != nullptr) s->owner->Detach();
  if (s->hook != nullptr) napi_remove_async_cleanup_hook(s->hook);
  delete s;
}

}  // namespace

void RegisterPoller(Napi::Env env, Napi::Object exports) {
  exports.Set("FdPoller", FdPoller::Define(env));
}

}  // namespace lgnet
