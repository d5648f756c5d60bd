// What jazzer.js's addon expects from its own libFuzzer fork, on top of stock libFuzzer 14.
//
// - The `_with_pc` trace hooks take the call site as an argument; stock libFuzzer reads it from the
//   return address. Forwarding loses only the per-site distinction of value profiling
//   (-use_value_profile); comparison tracing (the mutation dictionary) keeps working.
// - The fork hands its death callback (dump the input, print stats) to
//   __jazzer_set_death_callback; stock libFuzzer hands it to __sanitizer_set_death_callback when a
//   strong definition exists. Routing one to the other lets the addon dump a crashing input.
#include <cstdint>

extern "C" {
void __sanitizer_cov_trace_const_cmp8(uint64_t arg1, uint64_t arg2);
void __sanitizer_cov_trace_pc_indir(uintptr_t callee);
void __jazzer_set_death_callback(void (*callback)());

__attribute__((visibility("default"))) void
__sanitizer_cov_trace_const_cmp8_with_pc(uintptr_t, uint64_t arg1, uint64_t arg2) {
  __sanitizer_cov_trace_const_cmp8(arg1, arg2);
}

__attribute__((visibility("default"))) void __sanitizer_cov_trace_pc_indir_with_pc(void *,
                                                                                  uintptr_t callee) {
  __sanitizer_cov_trace_pc_indir(callee);
}

__attribute__((visibility("default"))) void __sanitizer_set_death_callback(void (*callback)()) {
  __jazzer_set_death_callback(callback);
}
}
