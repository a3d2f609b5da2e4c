/* blake3_sse41.c compiled for its instruction set alone: blake3_dispatch.c picks
   it at run time only when the CPU has it, so the rest of the extension keeps
   the platform's baseline. */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("sse4.1")
#include "blake3_sse41.c"
#endif
