{
  "targets": [
    {
      "target_name": "lgnet",
      "sources": [
        "native/addon.cc",
        "native/errors.cc",
        "native/fd.cc",
        "native/eventfd.cc",
        "native/memory.cc",
        "native/guard.cc",
        "native/tap.cc",
        "native/batch.cc",
        "native/uring.cc",
        "native/wait.cc",
        "native/poller.cc",
        "native/unix-socket.cc",
        "native/netns.cc",
        "native/hardening.cc",
        "native/userfault.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": [
        "NAPI_VERSION=9",
        "NAPI_DISABLE_CPP_EXCEPTIONS"
      ],
      "cflags_cc": [
        "-std=c++17",
        "-O2",
        "-Wall",
        "-Wextra"
      ]
    }
  ]
}
