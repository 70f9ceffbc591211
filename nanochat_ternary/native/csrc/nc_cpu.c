/* What this build was compiled for, and what the CPU running it supports (for kernels.py's choice). */
#include "nc_common.h"
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* the instruction set this library's kernels use (kernels.py's ISA names) */
const char* nc_isa(void) {
#if defined(NC_AMX)
  return "amx";
#elif defined(NC_VNNI)
  return "avx512vnni";
#elif defined(NC_AVXVNNI)
  return "avxvnni";
#elif defined(NC_AVX2)
  return "avx2";
#else
  return "portable";
#endif
}

/* Linux gives a process AMX tile state only once it asks (Documentation/arch/x86/xstate.rst);
   without it the first tile instruction is a SIGILL. Asking twice is harmless. */
int nc_amx_permit(void) {
#if defined(__linux__) && defined(__x86_64__)
  enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
  return 0;
#endif
}

/* bit 0: AVX2 + FMA + F16C, bit 1: AVX-VNNI, bit 2: AVX-512 F/BW/VL + VNNI, bit 3: AMX tiles with
   INT8, granted to this process (as the running CPU and OS report them: libgcc's cpu model checks
   that the OS saves the vector registers) */
int nc_cpu_features(void) {
  int f = 0;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) f |= 1;  /* F16C: every AVX2 CPU has it */
  if ((f & 1) && __builtin_cpu_supports("avxvnni")) f |= 2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni"))
    f |= 4;
  if (__builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-int8") && nc_amx_permit()) f |= 8;
#endif
  return f;
}
