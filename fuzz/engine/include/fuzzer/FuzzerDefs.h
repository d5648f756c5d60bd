// The two declarations jazzer.js's addon takes from libFuzzer's internal FuzzerDefs.h, which Debian's
// libclang-rt-14-dev does not ship. They match the symbol the archive exports:
// fuzzer::FuzzerDriver(int*, char***, int (*)(unsigned char const*, unsigned long)).
#pragma once
#include <cstddef>
#include <cstdint>

namespace fuzzer {
typedef int (*UserCallback)(const uint8_t *Data, size_t Size);
int FuzzerDriver(int *argc, char ***argv, UserCallback Callback);
} // namespace fuzzer
