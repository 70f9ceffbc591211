/* What this build was compiled for, and what the CPU running it supports (for kernels.py's choice). */
#include "nc_common.h"

/* the instruction set this library's kernels use (kernels.py's ISA names) */
const char* nc_isa(void) {
#if defined(NC_VNNI)
  return "avx512vnni";
#elif defined(NC_AVXVNNI)
  return "avxvnni";
#elif defined(NC_AVX2)
  return "avx2";
#else
  return "portable";
#endif
}

/* bit 0: AVX2 + FMA + F16C, bit 1: AVX-VNNI, bit 2: AVX-512 F/BW/VL + VNNI (as the running CPU and
   OS report them: libgcc's cpu model checks that the OS saves the vector registers) */
int nc_cpu_features(void) {
  int f = 0;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) f |= 1;  /* F16C: every AVX2 CPU has it */
  if ((f & 1) && __builtin_cpu_supports("avxvnni")) f |= 2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni"))
    f |= 4;
#endif
  return f;
}
