// guard.h: the SIGBUS guard over guest memory (guard.cc). memory.cc guards every file mapping it makes
// and releases the guard when the mapping's address range goes away.
#pragma once

#include <napi.h>
#include <cstddef>
#include <cstdint>

namespace lgnet {

// Claims a guard over [addr, addr + span), which must be exactly one mapping of lgnet's (span: its
// length rounded up to the mapping's page size). Returns the guard's index, or -1 when every guard is
// in use (65536). Not for use from the signal handler.
int32_t GuardAdd(void* addr, size_t span);
// Releases a guard. Call it before the range is unmapped: nothing may touch the range any more.
void GuardRemove(int32_t guard);
// SIGBUS faults the guard has absorbed since GuardAdd.
uint32_t GuardFaults(int32_t guard);

// Installs the handler (once per process) and exports memoryGuard() and faultCounter().
void RegisterGuard(Napi::Env env, Napi::Object exports);

}  // namespace lgnet
