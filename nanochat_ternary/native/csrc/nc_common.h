/* Shared by the native kernel sources: includes, the instruction-set macros, helpers.
 *
 * native/build.py compiles the same .c files once per instruction set (flags in build.py: ISA_FLAGS)
 * and loads the best one the CPU supports (nc_cpu.c reports both sides). Which code each build
 * contains follows from the compiler's target macros:
 *   NC_VNNI     AVX-512 F/BW + VNNI (vpdpbusd on 512-bit vectors)
 *   NC_AVX512   AVX-512 F (the F16 kernel's 16-wide path)
 *   NC_AVX2     AVX2 (+ FMA, F16C): vpmaddubsw ternary/int8 dots, 8-wide F16
 *   NC_AVXVNNI  AVX2 build with AVX-VNNI: 256-bit vpdpbusd instead of vpmaddubsw + vpmaddwd
 *   NC_AMX      the NC_VNNI build plus AMX-INT8 tiles for ternary products of 4+ tokens (nc_amx.c)
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
#if defined(NC_VNNI) && defined(__AMX_TILE__) && defined(__AMX_INT8__)
#define NC_AMX 1
#define NC_AMX_MIN_M 4  /* fewer tokens: the vpdpbusd paths (nc_ternary.c) */
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
AI float nc_hsum256_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

#if defined(NC_AVX512) || defined(NC_AVX2)
/* Many horizontal sums at once: out[j] = the sum of the lanes of v[j], j < c. One sum alone is ~8
   shuffles and adds on one dependency chain, as many instructions as the products of a 256-long
   ternary dot product; adding while transposing (unpack, then 128-bit lane shuffles) sums 8 or
   16 vectors in about 3 instructions each (vphaddd was no faster on AVX2, measured on Zen 4).
   Integers, so exact whatever the order. */
AI int32_t nc_hsum256(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}
AI __m128i nc_hsum4x8(const __m256i* v) {  /* hadd twice: each 128-bit half holds 4 partial sums */
  __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}
/* lanes added as int32 (fp = 0) or float (fp = 1) on integer-typed vectors: the trees below
   shuffle the same way for both, so one tree serves the ternary sums and the attention scores */
AI __m256i nc_add8(__m256i a, __m256i b, const int fp) {
  return fp ? _mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b))) : _mm256_add_epi32(a, b);
}
AI __m256i nc_tree8(const __m256i* v, const int fp) {
  __m256i w[4], u[2];
  for (int j = 0; j < 4; j++)
    w[j] = nc_add8(_mm256_unpacklo_epi32(v[2 * j], v[2 * j + 1]), _mm256_unpackhi_epi32(v[2 * j], v[2 * j + 1]), fp);
  for (int j = 0; j < 2; j++)
    u[j] = nc_add8(_mm256_unpacklo_epi64(w[2 * j], w[2 * j + 1]), _mm256_unpackhi_epi64(w[2 * j], w[2 * j + 1]), fp);
  return nc_add8(_mm256_permute2x128_si256(u[0], u[1], 0x20), _mm256_permute2x128_si256(u[0], u[1], 0x31), fp);
}
AI __m256i nc_hsum8x8(const __m256i* v) { return nc_tree8(v, 0); }
AI __m256 nc_hsum8x8_ps(const __m256* v) { return _mm256_castsi256_ps(nc_tree8((const __m256i*)v, 1)); }
AI void nc_hsums256(const __m256i* v, const int c, int32_t* out) {
  int j = 0;
  for (; j + 8 <= c; j += 8) _mm256_storeu_si256((__m256i*)(out + j), nc_hsum8x8(v + j));
  for (; j + 4 <= c; j += 4) _mm_storeu_si128((__m128i*)(out + j), nc_hsum4x8(v + j));
  for (; j < c; j++) out[j] = nc_hsum256(v[j]);
}
#endif
#ifdef NC_AVX512
AI __m512i nc_add16(__m512i a, __m512i b, const int fp) {  /* as nc_add8 */
  return fp ? _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b))) : _mm512_add_epi32(a, b);
}
/* for floats each sum is (l0 + l2) + (l1 + l3) within 128-bit lanes, then (L0 + L1) + (L2 + L3) */
AI __m512i nc_tree16(const __m512i* v, const int fp) {
  __m512i w[8], u[4];
  /* w[j]: per 128-bit lane, partial sums of (v[2j], v[2j+1], v[2j], v[2j+1]) */
  for (int j = 0; j < 8; j++)
    w[j] = nc_add16(_mm512_unpacklo_epi32(v[2 * j], v[2 * j + 1]), _mm512_unpackhi_epi32(v[2 * j], v[2 * j + 1]), fp);
  /* u[j]: per 128-bit lane L, the sums over lane L of v[4j], ..., v[4j + 3] */
  for (int j = 0; j < 4; j++)
    u[j] = nc_add16(_mm512_unpacklo_epi64(w[2 * j], w[2 * j + 1]), _mm512_unpackhi_epi64(w[2 * j], w[2 * j + 1]), fp);
  /* add lanes 0 + 1 and 2 + 3 (0x88 picks lanes 0, 2 of each input, 0xdd lanes 1, 3), then the pairs */
  __m512i t0 = nc_add16(_mm512_shuffle_i32x4(u[0], u[1], 0x88), _mm512_shuffle_i32x4(u[0], u[1], 0xdd), fp);
  __m512i t1 = nc_add16(_mm512_shuffle_i32x4(u[2], u[3], 0x88), _mm512_shuffle_i32x4(u[2], u[3], 0xdd), fp);
  return nc_add16(_mm512_shuffle_i32x4(t0, t1, 0x88), _mm512_shuffle_i32x4(t0, t1, 0xdd), fp);
}
AI __m512i nc_hsum16x16(const __m512i* v) { return nc_tree16(v, 0); }
AI __m512 nc_hsum16x16_ps(const __m512* v) { return _mm512_castsi512_ps(nc_tree16((const __m512i*)v, 1)); }
AI void nc_hsums512(const __m512i* v, const int c, int32_t* out) {
  int j = 0;
  for (; j + 16 <= c; j += 16) _mm512_storeu_si512(out + j, nc_hsum16x16(v + j));
  __m256i h[16];  /* fewer than 16 left: halves added, then the 256-bit trees */
  for (int i = j; i < c; i++) h[i - j] = _mm256_add_epi32(_mm512_castsi512_si256(v[i]), _mm512_extracti64x4_epi64(v[i], 1));
  nc_hsums256(h, c - j, out + j);
}
#endif

/* sum(a * b) over D floats in 16 partial sums, added in lane order at the end: it vectorises
   without -ffast-math, and every build (AVX-512, AVX2, portable) adds in the same order, so all
   give the same bits */
AI float nc_dot16(const float* a, const float* b, int D) {
  float acc[16] = {0};
  int j = 0;
  for (; j + 16 <= D; j += 16)
    for (int l = 0; l < 16; l++) acc[l] += a[j + l] * b[j + l];
  for (; j < D; j++) acc[0] += a[j] * b[j];
  float s = 0;
  for (int l = 0; l < 16; l++) s += acc[l];
  return s;
}

/* max |x| over D floats (0 for none), in 16 partial maxima (exact in any order; NaNs are skipped).
   GCC leaves the plain loop scalar (a compare and a move per element: most of a row's
   preparation, 64 rows of 2,048 took 154 us, now 44); vmaxps(v, m) is exactly `v > m ? v : m`: it
   returns its second operand when either is a NaN or both are zeros */
AI float nc_absmax16(const float* x, int D) {
  float m[16] = {0};
  int j = 0;
#if defined(NC_AVX512)
  __m512 m0 = _mm512_setzero_ps(), m1 = m0;
  for (; j + 32 <= D; j += 32) {
    m0 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + j)), m0);
    m1 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + j + 16)), m1);
  }
  _mm512_storeu_ps(m, _mm512_max_ps(m1, m0));
#elif defined(NC_AVX2)
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m0 = _mm256_setzero_ps(), m1 = m0;
  for (; j + 16 <= D; j += 16) {
    m0 = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), m0);
    m1 = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j + 8)), m1);
  }
  _mm256_storeu_ps(m, m0);
  _mm256_storeu_ps(m + 8, m1);
#endif
  for (; j + 16 <= D; j += 16)
    for (int l = 0; l < 16; l++) {
      float v = fabsf(x[j + l]);
      m[l] = v > m[l] ? v : m[l];
    }
  for (; j < D; j++) {
    float v = fabsf(x[j]);
    m[0] = v > m[0] ? v : m[0];
  }
  float a = 0.f;
  for (int l = 0; l < 16; l++) a = m[l] > a ? m[l] : a;
  return a;
}

/* hi[l] (and lo[l] unless lo is NULL), 16 lanes: the largest (smallest) of seed, x[l], x[l + 16],
   ... over the first D / 16 * 16 values, as `v > m ? v : m` (`v < m ? v : m`) computes them; returns
   how many values that covers. vmaxps(v, m) / vminps(v, m) are exactly those expressions: they return
   their second operand for NaNs and for zeros of either sign (GCC leaves the plain loops scalar). */
AI int nc_minmax16(const float* x, int D, float seed, float* hi, float* lo) {
  int j = 0;
#if defined(NC_AVX512)
  __m512 h = _mm512_set1_ps(seed), l = h;
  for (; j + 16 <= D; j += 16) {
    __m512 v = _mm512_loadu_ps(x + j);
    h = _mm512_max_ps(v, h);
    if (lo) l = _mm512_min_ps(v, l);
  }
  _mm512_storeu_ps(hi, h);
  if (lo) _mm512_storeu_ps(lo, l);
#elif defined(NC_AVX2)
  __m256 h0 = _mm256_set1_ps(seed), h1 = h0, l0 = h0, l1 = h0;
  for (; j + 16 <= D; j += 16) {
    __m256 v0 = _mm256_loadu_ps(x + j), v1 = _mm256_loadu_ps(x + j + 8);
    h0 = _mm256_max_ps(v0, h0);
    h1 = _mm256_max_ps(v1, h1);
    if (lo) {
      l0 = _mm256_min_ps(v0, l0);
      l1 = _mm256_min_ps(v1, l1);
    }
  }
  _mm256_storeu_ps(hi, h0);
  _mm256_storeu_ps(hi + 8, h1);
  if (lo) {
    _mm256_storeu_ps(lo, l0);
    _mm256_storeu_ps(lo + 8, l1);
  }
#else
  for (int l = 0; l < 16; l++) {
    hi[l] = seed;
    if (lo) lo[l] = seed;
  }
  for (; j + 16 <= D; j += 16)
    for (int l = 0; l < 16; l++) {
      float v = x[j + l];
      hi[l] = v > hi[l] ? v : hi[l];
      if (lo) lo[l] = v < lo[l] ? v : lo[l];
    }
#endif
  return j;
}

/* the largest of seed and x[0..D) (`v > m ? v : m` throughout: NaNs are skipped, except a NaN seed) */
AI float nc_max(const float* x, int D, float seed) {
  float hi[16];
  int j = nc_minmax16(x, D, seed, hi, NULL);
  float r = seed;
  for (int l = 0; l < 16; l++) r = hi[l] > r ? hi[l] : r;
  for (; j < D; j++) r = x[j] > r ? x[j] : r;
  return r;
}

/* e^x for x <= 0: Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2, and Cephes' degree-7
   polynomial for e^r (about 1 ulp, as the Cephes expf), then 2^k from the exponent bits. Plain
   float operations (no FMA contraction: -ffp-contract=off), so every build gives the same bits,
   and it vectorises (libm's expf is one scalar call per element; for AVX2 only with
   -fno-trapping-math, see build.py). */
AI float nc_exp_neg(float x) {
  x = x > -87.0f ? x : -87.0f;  /* e^-87 ~ 1.6e-38: the smallest normal float's range */
  float k = nearbyintf(x * 1.44269504088896341f);
  float r = x - k * 0.693359375f - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = ((int32_t)k + 127) << 23;
  float two_k;
  __builtin_memcpy(&two_k, &bits, sizeof two_k);
  return p * two_k;
}

/* silu(g) = g * sigmoid(g) = g / (1 + e^-g), from e = e^-|g| <= 1 so that nothing overflows:
   g / (1 + e) for g >= 0, g * e / (1 + e) below (both numerators, then a select: vectorises) */
AI float nc_silu(float g) {
  float e = nc_exp_neg(-fabsf(g));
  float ge = g * e;
  return (g >= 0.f ? g : ge) / (1.0f + e);
}

/* The row-wise training kernels' threading (nc_train.c, nc_muon.c): */
/* below this many elements one thread is faster than waking the others */
#define NC_ROWWISE_PARALLEL (1 << 15)

/* this thread's contiguous block [n0, n1) of N rows */
AI void nc_row_block(int N, int* n0, int* n1) {
  int t = omp_get_thread_num(), T = omp_get_num_threads();
  int per = (N + T - 1) / T;
  *n0 = t * per < N ? t * per : N;
  *n1 = *n0 + per < N ? *n0 + per : N;
}

/* kernels that other kernel files call (nc_trunk.c runs whole layers with them) */
void nc_ternary_gemm(int M, int N, int K, const float* x, const float* nw, float eps, int glu, const uint8_t* w,
                     const float* sw, int G, int Q, float* out, float* xn, int8_t* xq, float* xs, int32_t* xsum);
void nc_attention(int R, int H, int KV, int hd, int cap, const float* qkv, const int64_t* slot, const int64_t* pos,
                  const float* cos_t, const float* sin_t, void* kc, void* vc, int f16, float* out);
int nc_amx_permit(void);
#if defined(NC_AMX)
/* 1 when done, 0 when out of memory or refused the tile state (the caller falls back to the
   vpdpbusd paths) */
int nc_amx_range(int M, int N, int K, const int8_t* xq, const uint8_t* w, const float* sw, int G,
                 const float* xs, const int32_t* xsum, float* out, int n0, int n1);
#endif

#endif
