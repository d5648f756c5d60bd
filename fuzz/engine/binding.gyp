# Builds @jazzer.js/fuzzer's addon from the sources its npm package ships, against Debian's libFuzzer
# (libclang-rt-14-dev). The package's own install fetches a prebuild from GitHub or builds a libFuzzer
# fork it downloads; neither is reachable here, so package.json's allowScripts skips it and
# fuzz/engine/build.sh copies the sources to src/ and runs this instead.
{
  "variables": {
    "libfuzzer%": "<!(ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a | head -n1)",
  },
  "targets": [
    {
      "target_name": "jazzerjs",
      "sources": [
        "src/addon.cpp",
        "src/fuzzing_async.cpp",
        "src/fuzzing_sync.cpp",
        "src/utils.cpp",
        "src/shared/callbacks.cpp",
        "src/shared/coverage.cpp",
        "src/shared/sanitizer_symbols.cpp",
        "src/shared/tracing.cpp",
        "libfuzzer-compat.cc",
      ],
      "include_dirs": [
        "include",
        "<!(node -p \"require('node-addon-api', { paths: [require('path').dirname(require.resolve('@jazzer.js/fuzzer/package.json'))] }).include_dir\")",
      ],
      "defines": ["NAPI_VERSION=4", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-w"],
      "libraries": ["-Wl,--whole-archive <(libfuzzer) -Wl,--no-whole-archive"],
    }
  ]
}
