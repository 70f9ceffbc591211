/* Shared by the native kernel sources: includes, the instruction-set macros, helpers.
 *
 * native/build.py compiles the same .c files once per instruction set (flags in build.py: ISA_FLAGS)
 * and loads the best one the CPU supports (nc_cpu.c reports both sides). Which code each build
 * contains follows from the compiler's target macros:
 *   NC_VNNI     AVX-512 F/BW + VNNI (vpdpbusd on 512-bit vectors)
 *   NC_AVX512   AVX-512 F (the F16 kernel's 16-wide path)
 *   NC_AVX2     AVX2 (+ FMA, F16C): vpmaddubsw ternary/int8 dots, 8-wide F16
 *   NC_AVXVNNI  AVX2 build with AVX-VNNI: 256-bit vpdpbusd instead of vpmaddubsw + vpmaddwd
 *   (none)      plain C loops: the reference every other path must match integer for integer
 */
#ifndef NC_COMMON_H
#define NC_COMMON_H

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define NC_VNNI 1
#endif
#if defined(__AVX512F__)
#define NC_AVX512 1
#endif
#if !defined(NC_AVX512) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define NC_AVX2 1
#if defined(__AVXVNNI__)
#define NC_AVXVNNI 1
#endif
#endif
#if defined(NC_AVX512) || defined(NC_AVX2)
#include <immintrin.h>
#endif

#define AI static inline __attribute__((always_inline))
/* smallest job (multiply-adds) worth an OpenMP region: below it the region's wake-up costs more,
   and on a busy machine a region waits for a descheduled thread */
#ifndef NC_PARALLEL_WORK
#if defined(NC_VNNI)
#define NC_PARALLEL_WORK (1 << 20)
#else  /* slower per-core kernels: a region pays off sooner (measured on a 2-core AVX2 EPYC) */
#define NC_PARALLEL_WORK (1 << 18)
#endif
#endif

/* this thread's share [n0, n1) of N output rows, in multiples of 8 rows */
AI void nc_thread_rows(int N, int* n0, int* n1) {
  int t = omp_get_thread_num(), T = omp_get_num_threads();
  int per = ((N + T - 1) / T + 7) / 8 * 8;
  *n0 = t * per < N ? t * per : N;
  *n1 = *n0 + per < N ? *n0 + per : N;
}

#ifdef NC_VNNI
/* acc += u8(a) x s8(b) in groups of four (vpdpbusd). GCC 12 keeps the loop-carried accumulators of
   the intrinsic in other registers and copies each one in and out around every vpdpbusd (two
   extra moves per product, measured: the 4 x 4 tiles ran at a quarter of the unit's rate); the
   asm accumulates in place. */
AI __m512i nc_dpbusd(__m512i acc, __m512i a, __m512i b) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "vm"(b));
  return acc;
}
#endif

#ifdef NC_AVX2
/* acc += vpmaddubsw(u8 a, s8 b) in 16-bit lanes, the same way and for the same reason as
   nc_dpbusd: with the intrinsics GCC 12 reassociates a tile's adds, keeps dozens of products
   live and spills them to the stack (161 stack accesses per 96 vpmaddubsw in the 4 x 3 tile,
   measured 19 of a possible ~48 products a cycle); in asm each product goes straight into its
   accumulator. */
AI __m256i nc_maddubs_add(__m256i acc, __m256i a, __m256i b) {
  __m256i t;
  __asm__("vpmaddubsw %3, %2, %1\n\tvpaddw %1, %0, %0" : "+x"(acc), "=&x"(t) : "x"(a), "xm"(b));
  return acc;
}
/* acc (32-bit lanes) += sum(w * x) of signed bytes, as vpmaddubsw(|w|, sign(x, w)) then
   vpmaddwd with ones; wa = |w| (made once per weight vector); asm for the reason given above */
AI __m256i nc_i8_dot_add(__m256i acc, __m256i wa, __m256i w, __m256i x, __m256i ones) {
  __m256i t;
  __asm__("vpsignb %3, %4, %1\n\tvpmaddubsw %1, %2, %1\n\tvpmaddwd %5, %1, %1\n\tvpaddd %1, %0, %0"
          : "+x"(acc), "=&x"(t) : "x"(wa), "x"(w), "x"(x), "x"(ones));
  return acc;
}
AI int32_t nc_hsum256(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}
AI float nc_hsum256_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

/* kernels that other kernel files call (nc_trunk.c runs whole layers with them) */
void nc_ternary_gemm(int M, int N, int K, const float* x, const float* nw, float eps, int glu, const uint8_t* w,
                     const float* sw, int G, int Q, float* out, float* xn, int8_t* xq, float* xs, int32_t* xsum);
void nc_attention(int R, int H, int KV, int hd, int cap, const float* qkv, const int64_t* slot, const int64_t* pos,
                  const float* cos_t, const float* sin_t, float* kc, float* vc, float* out);

#endif
