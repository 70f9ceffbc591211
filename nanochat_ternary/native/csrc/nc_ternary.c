/* Ternary x int8 matmul: nc_ternary_gemm (see kernels.py for the Python side).
 *
 * Activations are quantized per token to int8 (absmax, exactly as bitlinear.quantize_activation:
 * scale = Q / max|x|, round half to even, clamp to [-Q-1, Q]); weights are packed 2 bits each
 * (stored value t + 1 in {0, 1, 2}). The integer dot products multiply unsigned 8-bit weights by
 * signed 8-bit activations: sum((t + 1) * x) - sum(x) = sum(t * x), so every path computes the
 * exact integer sum, then scales it by the weight group's scale and 1 / scale(x).
 * Layout: each row is K / 256 blocks of 64 bytes; bits 2s..2s+1 of byte j of a block hold the
 * weight of column 64 s + j of that block (s = 0..3), so a load and a shift give 32 or 64 weights
 * lined up with as many consecutive activations.
 *
 * Blocked GEMM: a tile of NR weight rows x MT tokens; each 2-bit plane of a weight block is
 * unpacked once (shift + mask, in registers) and applied to all MT tokens, each activation
 * vector to all NR rows, so prefill and batched decode read the weights M / MT times less often
 * than token-by-token products. Output rows are split over OpenMP threads (the libgomp torch
 * loaded, so torch.set_num_threads applies).
 *
 * Per instruction set (nc_common.h):
 * - AVX-512 VNNI: vpdpbusd on 64 weights (the design of llama.cpp's TQ2_0 / bitnet.cpp's I2_S
 *   dot products, https://github.com/ggml-org/llama.cpp/pull/8151);
 * - AVX-VNNI: the same on 32 weights;
 * - AVX2: vpmaddubsw (u8 x s8 pairs -> s16) summed in 16 bits for up to 7 blocks, then vpmaddwd
 *   to 32 bits. Each s16 lane of one vpmaddubsw is at most 2 * 2 * 128 = 512 in magnitude, so 56
 *   of them (7 blocks x 8 vectors) stay below 32767: no saturation, exact integers. Each product
 *   goes into its accumulator in asm (nc_common.h, nc_maddubs_add);
 * - portable: plain C loops;
 * - AMX (the AVX-512 VNNI build plus tiles): nc_amx.c from NC_AMX_MIN_M tokens (rows_range).
 */
#include "nc_common.h"

/* Prepare the int8 input of a ternary projection, row by row (every row alike, whatever M is):
   optionally x = silu(gate) * up from a [M, 2K] gate|up row (glu), optionally RMSNorm with gain
   nw (x * 1/sqrt(mean(x^2) + eps) * nw), then per-token absmax quantization; xs[m] = Q / max|x|
   (the training code's scale), xsum = per-group sums of the quantized values. xn: [M, K] scratch. */
static void quant_rows(int M, int K, const float* x, const float* nw, float eps, int glu, float* xn,
                       int Q, int G, int8_t* xq, float* xs, int32_t* xsum) {
  int KG = K / G;
  for (int m = 0; m < M; m++) {
    const float* r = x + (int64_t)m * K * (glu ? 2 : 1);
    float* t = xn + (int64_t)m * K;
    if (glu) {
      for (int k = 0; k < K; k++) t[k] = nc_silu(r[k]) * r[K + k];
      r = t;
    }
    if (nw) {
      float inv = 1.0f / sqrtf(nc_dot16(r, r, K) / (float)K + eps);
      for (int k = 0; k < K; k++) t[k] = r[k] * inv * nw[k];
      r = t;
    }
    float a = nc_absmax16(r, K);
    if (a < 1e-5f) a = 1e-5f;
    float s = (float)Q * (1.0f / a);  /* torch evaluates `q / t` as q * reciprocal(t) */
    xs[m] = s;
    for (int g = 0; g < G; g++) {
      int32_t sum = 0;
      for (int k = g * KG; k < (g + 1) * KG; k++) {
        float v = nearbyintf(r[k] * s);
        v = v < (float)(-Q - 1) ? (float)(-Q - 1) : (v > (float)Q ? (float)Q : v);
        xq[(int64_t)m * K + k] = (int8_t)v;
        sum += (int32_t)v;
      }
      xsum[m * G + g] = sum;
    }
  }
}

/* integer dot products sum((t + 1) * x) of NR packed weight rows with MT quantized tokens over
   blocks [b0, b1); out[r * MT + i] */
AI void tern_tile(const uint8_t* w, int64_t KB, const int8_t* xq, int64_t K, int b0, int b1,
                  const int NR, const int MT, int32_t* out) {
#if defined(NC_VNNI)
  __m512i acc[16];  /* fixed sizes (NR * MT <= 16): a VLA would live on the stack */
  _Pragma("GCC unroll 32") for (int j = 0; j < NR * MT; j++) acc[j] = _mm512_setzero_si512();
  const __m512i mask = _mm512_set1_epi8(3);
  for (int b = b0; b < b1; b++) {
    __m512i v[8];
    _Pragma("GCC unroll 32") for (int r = 0; r < NR; r++) {
      v[r] = _mm512_loadu_si512(w + r * KB + b * 64);
      _mm_prefetch((const char*)(w + (r + NR) * KB + b * 64), _MM_HINT_T0);  /* the next tile's rows */
    }
    _Pragma("GCC unroll 32") for (int s = 0; s < 4; s++) {
      __m512i xv[4];
      _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++) xv[i] = _mm512_loadu_si512(xq + i * K + b * 256 + 64 * s);
      _Pragma("GCC unroll 32") for (int r = 0; r < NR; r++) {
        __m512i ws = _mm512_and_si512(_mm512_srli_epi16(v[r], 2 * s), mask);
        _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++) acc[r * MT + i] = nc_dpbusd(acc[r * MT + i], ws, xv[i]);
      }
    }
  }
  nc_hsums512(acc, NR * MT, out);
#elif defined(NC_AVX2)
  const __m256i mask = _mm256_set1_epi8(3);
  __m256i acc[16];
  _Pragma("GCC unroll 32") for (int j = 0; j < NR * MT; j++) acc[j] = _mm256_setzero_si256();
#if defined(NC_AVXVNNI)
  for (int b = b0; b < b1; b++)
    _Pragma("GCC unroll 32") for (int r = 0; r < NR; r++)
      _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {
        __m256i v = _mm256_loadu_si256((const __m256i*)(w + r * KB + b * 64 + 32 * h));
        _Pragma("GCC unroll 4") for (int s = 0; s < 4; s++) {
          __m256i ws = _mm256_and_si256(_mm256_srli_epi16(v, 2 * s), mask);
          _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++)
            acc[r * MT + i] = _mm256_dpbusd_avx_epi32(acc[r * MT + i], ws,
                                                      _mm256_loadu_si256((const __m256i*)(xq + i * K + b * 256 + 64 * s + 32 * h)));
        }
      }
#else
  const __m256i ones = _mm256_set1_epi16(1);
  for (int b = b0; b < b1;) {
    int be = b + 7 < b1 ? b + 7 : b1;  /* 16-bit sums for at most 7 blocks (see the file comment) */
    __m256i a16[16];
    _Pragma("GCC unroll 32") for (int j = 0; j < NR * MT; j++) a16[j] = _mm256_setzero_si256();
    for (; b < be; b++)
      _Pragma("GCC unroll 32") for (int r = 0; r < NR; r++) {
        _mm_prefetch((const char*)(w + (r + NR) * KB + b * 64), _MM_HINT_T0);  /* the next tile's rows */
        _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {
          __m256i v = _mm256_loadu_si256((const __m256i*)(w + r * KB + b * 64 + 32 * h));
          _Pragma("GCC unroll 4") for (int s = 0; s < 4; s++) {
            __m256i ws = _mm256_and_si256(_mm256_srli_epi16(v, 2 * s), mask);
            _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++)
              a16[r * MT + i] = nc_maddubs_add(a16[r * MT + i], ws, _mm256_loadu_si256((const __m256i*)(xq + i * K + b * 256 + 64 * s + 32 * h)));
          }
        }
      }
    _Pragma("GCC unroll 32") for (int j = 0; j < NR * MT; j++) acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(a16[j], ones));
  }
#endif
  nc_hsums256(acc, NR * MT, out);
#else
  for (int r = 0; r < NR; r++) for (int i = 0; i < MT; i++) {
    int32_t sum = 0;
    for (int b = b0; b < b1; b++) {
      const uint8_t* wb = w + r * KB + b * 64;
      const int8_t* xb = xq + i * K + b * 256;
      for (int s = 0; s < 4; s++)
        for (int j = 0; j < 64; j++) sum += (int32_t)((wb[j] >> (2 * s)) & 3) * xb[64 * s + j];
    }
    out[r * MT + i] = sum;
  }
#endif
}

/* rows [n0, n1) (a multiple of NR) x tokens [0, M) (a multiple of MT), NR x MT tiles */
AI void tern_rows(int M, int N, int K, const int8_t* xq, const uint8_t* w, const float* sw, int G,
                  const float* xs, const int32_t* xsum, float* out, int n0, int n1, const int NR, const int MT) {
  int64_t KB = K / 4;
  int nb = K / 256 / G;
  for (int n = n0; n + NR <= n1; n += NR)
    for (int m0 = 0; m0 + MT <= M; m0 += MT) {
#if defined(NC_AVX512) || defined(NC_AVX2)
      if (MT == 4) {  /* the float epilogue 4 tokens at a time (the AVX2 build's 3 x 4 tiles), the same operations as below */
        __m128 r4[16];
        _Pragma("GCC unroll 16") for (int r = 0; r < NR; r++) r4[r] = _mm_setzero_ps();
        for (int g = 0; g < G; g++) {
          int32_t acc[16];
          tern_tile(w + (int64_t)n * KB, KB, xq + (int64_t)m0 * K, K, g * nb, (g + 1) * nb, NR, MT, acc);
          __m128i xsum4 = _mm_set_epi32(xsum[(m0 + 3) * G + g], xsum[(m0 + 2) * G + g], xsum[(m0 + 1) * G + g], xsum[m0 * G + g]);
          _Pragma("GCC unroll 16") for (int r = 0; r < NR; r++)
            r4[r] = _mm_add_ps(r4[r], _mm_mul_ps(_mm_set1_ps(sw[(int64_t)(n + r) * G + g]),
                                                 _mm_cvtepi32_ps(_mm_sub_epi32(_mm_loadu_si128((const __m128i*)(acc + 4 * r)), xsum4))));
        }
        __m128 xs4 = _mm_loadu_ps(xs + m0);
        _Pragma("GCC unroll 16") for (int r = 0; r < NR; r++) {
          float o[4];
          _mm_storeu_ps(o, _mm_div_ps(r4[r], xs4));
          _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++) out[(int64_t)(m0 + i) * N + n + r] = o[i];
        }
        continue;
      }
#endif
      float res[16];
      int32_t acc[16];
      _Pragma("GCC unroll 32") for (int j = 0; j < NR * MT; j++) res[j] = 0.f;
      for (int g = 0; g < G; g++) {
        tern_tile(w + (int64_t)n * KB, KB, xq + (int64_t)m0 * K, K, g * nb, (g + 1) * nb, NR, MT, acc);
        _Pragma("GCC unroll 32") for (int r = 0; r < NR; r++)
          _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++)
            res[r * MT + i] += sw[(int64_t)(n + r) * G + g] * (float)(acc[r * MT + i] - xsum[(m0 + i) * G + g]);
      }
      _Pragma("GCC unroll 32") for (int r = 0; r < NR; r++)
        _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++) out[(int64_t)(m0 + i) * N + n + r] = res[r * MT + i] / xs[m0 + i];
    }
}

/* rows [n0, n1) of MT tokens: NR-row tiles, then the leftover rows one at a time */
#define NC_TERN_ROWS(M, NR, MT) do {                                                      \
    int nf_ = n0 + (n1 - n0) / (NR) * (NR);                                                 \
    tern_rows(M, N, K, xq, w, sw, G, xs, xsum, out, n0, nf_, NR, MT);                       \
    tern_rows(M, N, K, xq, w, sw, G, xs, xsum, out, nf_, n1, 1, MT);                        \
  } while (0)

#if defined(NC_VNNI)
/* One token, one weight row at a time: the row's bytes are read front to back (the access pattern
   hardware prefetchers follow best); four accumulators (one per 2-bit plane) keep the vpdpbusd
   chains independent, and 16 rows' sums are added across lanes together (nc_hsum16x16). Integer
   sums, so the result equals the tiled path's exactly. */
AI __m512i tern_row_m1(const uint8_t* wr, const int8_t* xq, int b0, int b1) {
  const __m512i mask = _mm512_set1_epi8(3);
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (int b = b0; b < b1; b++) {
    __m512i v = _mm512_loadu_si512(wr + b * 64);
    const int8_t* xb = xq + b * 256;
    a0 = nc_dpbusd(a0, _mm512_and_si512(v, mask), _mm512_loadu_si512(xb));
    a1 = nc_dpbusd(a1, _mm512_and_si512(_mm512_srli_epi16(v, 2), mask), _mm512_loadu_si512(xb + 64));
    a2 = nc_dpbusd(a2, _mm512_and_si512(_mm512_srli_epi16(v, 4), mask), _mm512_loadu_si512(xb + 128));
    a3 = nc_dpbusd(a3, _mm512_and_si512(_mm512_srli_epi16(v, 6), mask), _mm512_loadu_si512(xb + 192));
  }
  return _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
}
AI void tern_rows_m1_n(int K, const int8_t* xq, const uint8_t* w, const float* sw, int G,
                       float xs, const int32_t* xsum, float* out, int n0, int n1, const int R) {
  int64_t KB = K / 4;
  int nb = K / 256 / G;
  for (int n = n0; n + R <= n1; n += R) {
    float res[16] = {0};
    for (int g = 0; g < G; g++) {
      __m512i s[16];
      int32_t acc[16];
      _Pragma("GCC unroll 16") for (int r = 0; r < R; r++) s[r] = tern_row_m1(w + (int64_t)(n + r) * KB, xq, g * nb, (g + 1) * nb);
      nc_hsums512(s, R, acc);
      _Pragma("GCC unroll 16") for (int r = 0; r < R; r++) res[r] += sw[(int64_t)(n + r) * G + g] * (float)(acc[r] - xsum[g]);
    }
    _Pragma("GCC unroll 16") for (int r = 0; r < R; r++) out[n + r] = res[r] / xs;
  }
}
static void tern_rows_m1(int K, const int8_t* xq, const uint8_t* w, const float* sw, int G,
                         float xs, const int32_t* xsum, float* out, int n0, int n1) {
  int nf = n0 + (n1 - n0) / 16 * 16;
  tern_rows_m1_n(K, xq, w, sw, G, xs, xsum, out, n0, nf, 16);
  tern_rows_m1_n(K, xq, w, sw, G, xs, xsum, out, nf, n1, 1);
}
#endif

/* rows [n0, n1) for all M tokens: big tiles first, then the remainders with smaller tiles */
static void tern_range(int M, int N, int K, const int8_t* xq, const uint8_t* w, const float* sw, int G,
                       const float* xs, const int32_t* xsum, float* out, int n0, int n1) {
#if defined(NC_VNNI)
  if (M == 1) { tern_rows_m1(K, xq, w, sw, G, xs[0], xsum, out, n0, n1); return; }
  enum { NR2 = 4, NR4 = 4 };  /* weight rows per tile with 2 tokens, with 4 */
#elif defined(NC_AVX2)
  /* at most 12 accumulators + mask + weights + unpacked plane + product: the 16 ymm registers.
     Tile shapes measured on a 2-core EPYC (one thread, 8-64 tokens, nano's FFN shapes): 3 x 4
     ran at 97-116 G products/s, 4 x 3 at 84-109, 2 x 6 at 85-120; two tokens 3 x 2 (83-93 vs
     73-83 for 4 x 2); one token 4 x 1 (no shape did better than 57-63) */
  if (M == 1) { NC_TERN_ROWS(1, 4, 1); return; }
  enum { NR2 = 3, NR4 = 3 };
#else
  if (M == 1) { NC_TERN_ROWS(1, 8, 1); return; }
  int mf = M / 4 * 4;
  NC_TERN_ROWS(mf, 4, 4);
#endif
#if defined(NC_VNNI) || defined(NC_AVX2)
  if (M == 2) { NC_TERN_ROWS(2, NR2, 2); return; }
  if (M == 3) { NC_TERN_ROWS(3, 4, 3); return; }
  int mf = M / 4 * 4;
  NC_TERN_ROWS(mf, NR4, 4);
  if (M > mf) {  /* the 1-3 leftover tokens share one pass over the weights */
    tern_range(M - mf, N, K, xq + (int64_t)mf * K, w, sw, G, xs + mf, xsum + mf * G, out + (int64_t)mf * N, n0, n1);
    return;
  }
#endif
  for (int m = mf; m < M; m++)  /* leftover tokens, one at a time */
    tern_range(1, N, K, xq + (int64_t)m * K, w, sw, G, xs + m, xsum + m * G, out + (int64_t)m * N, n0, n1);
}

/* rows [n0, n1) for all M tokens: on AMX tiles from NC_AMX_MIN_M tokens (nc_amx.c), else tern_range */
static void rows_range(int M, int N, int K, const int8_t* xq, const uint8_t* w, const float* sw, int G,
                       const float* xs, const int32_t* xsum, float* out, int n0, int n1) {
#if defined(NC_AMX)
  if (M >= NC_AMX_MIN_M && nc_amx_range(M, N, K, xq, w, sw, G, xs, xsum, out, n0, n1)) return;
#endif
  tern_range(M, N, K, xq, w, sw, G, xs, xsum, out, n0, n1);
}

/* out[M, N] = dequant(quant(prep(x)) @ ternary(w)^T), prep as in quant_rows (nw may be NULL);
   scratch: xn[M*K] floats, xq[M*K], xs[M], xsum[M*G] */
void nc_ternary_gemm(int M, int N, int K, const float* x, const float* nw, float eps, int glu, const uint8_t* w,
                     const float* sw, int G, int Q, float* out, float* xn, int8_t* xq, float* xs, int32_t* xsum) {
  int64_t work = (int64_t)M * N * K;
  if (work <= NC_PARALLEL_WORK) {
    quant_rows(M, K, x, nw, eps, glu, xn, Q, G, xq, xs, xsum);
    rows_range(M, N, K, xq, w, sw, G, xs, xsum, out, 0, N);
    return;
  }
  #pragma omp parallel
  {
    /* each thread prepares its share of the token rows (row by row: the same numbers as one
       thread; a SwiGLU input's expf calls are a large part of a batched decode step), then
       computes its share of the output rows for all tokens */
    int T = omp_get_num_threads(), t = omp_get_thread_num();
    int m0 = (int)((int64_t)M * t / T), m1 = (int)((int64_t)M * (t + 1) / T);
    if (m1 > m0)
      quant_rows(m1 - m0, K, x + (int64_t)m0 * K * (glu ? 2 : 1), nw, eps, glu, xn + (int64_t)m0 * K, Q, G,
                 xq + (int64_t)m0 * K, xs + m0, xsum + m0 * G);
    #pragma omp barrier
    int n0, n1;
    nc_thread_rows(N, &n0, &n1);
    rows_range(M, N, K, xq, w, sw, G, xs, xsum, out, n0, n1);
  }
}
