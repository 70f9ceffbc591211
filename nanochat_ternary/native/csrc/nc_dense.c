/* Dense kernels: F16 weights (dense models, the exact tied head) and an int8 copy of the tied head.
 *
 * - nc_f16_gemm: F16 weights, F32 activations, F32 accumulation (F16 -> F32 is exact, so the only
 *   rounding is the F32 sum, as in a float32 matmul). Every token row is summed in the same order
 *   whatever the batch size, so results do not depend on batching.
 * - nc_f16_gather_dot: the same F16 dot products for a list of rows per token (the head's exact
 *   rescoring of its top candidates).
 * - nc_int8_gemm: int8 weights with per-row scales x per-token int8 activations (the approximate
 *   head, network.Network.tied_head): exact integer sums, a float scale at the end.
 */
#include "nc_common.h"

AI void f16_rows(int M, int N, int K, const float* x, const uint16_t* w, float* out, int n0, int n1, const int NR, const int MT) {
  for (int n = n0; n + NR <= n1; n += NR)
    for (int m0 = 0; m0 + MT <= M; m0 += MT) {
#if defined(NC_AVX512)
      __m512 acc[16];
      _Pragma("GCC unroll 32") for (int j = 0; j < NR * MT; j++) acc[j] = _mm512_setzero_ps();
      for (int k = 0; k < K; k += 16) {
        __m512 xv[4];
        _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++) xv[i] = _mm512_loadu_ps(x + (int64_t)(m0 + i) * K + k);
        _Pragma("GCC unroll 32") for (int r = 0; r < NR; r++) {
          __m512 wv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(w + (int64_t)(n + r) * K + k)));
          _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++) acc[r * MT + i] = _mm512_fmadd_ps(wv, xv[i], acc[r * MT + i]);
        }
      }
      _Pragma("GCC unroll 32") for (int r = 0; r < NR; r++)
        _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++) out[(int64_t)(m0 + i) * N + n + r] = _mm512_reduce_add_ps(acc[r * MT + i]);
#elif defined(NC_AVX2)
      __m256 acc[16];
      _Pragma("GCC unroll 32") for (int j = 0; j < NR * MT; j++) acc[j] = _mm256_setzero_ps();
      for (int k = 0; k < K; k += 8) {
        __m256 xv[4];
        _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++) xv[i] = _mm256_loadu_ps(x + (int64_t)(m0 + i) * K + k);
        _Pragma("GCC unroll 32") for (int r = 0; r < NR; r++) {
          __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w + (int64_t)(n + r) * K + k)));
          _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++) acc[r * MT + i] = _mm256_fmadd_ps(wv, xv[i], acc[r * MT + i]);
        }
      }
      _Pragma("GCC unroll 32") for (int r = 0; r < NR; r++)
        _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++) out[(int64_t)(m0 + i) * N + n + r] = nc_hsum256_ps(acc[r * MT + i]);
#else
      for (int r = 0; r < NR; r++)
        for (int i = 0; i < MT; i++) {
          const _Float16* wr = (const _Float16*)(w + (int64_t)(n + r) * K);
          const float* xr = x + (int64_t)(m0 + i) * K;
          float sum = 0.f;
          for (int k = 0; k < K; k++) sum += (float)wr[k] * xr[k];
          out[(int64_t)(m0 + i) * N + n + r] = sum;
        }
#endif
    }
}

static void f16_range(int M, int N, int K, const float* x, const uint16_t* w, float* out, int n0, int n1) {
  if (M == 1) {
    int nf = n0 + (n1 - n0) / 8 * 8;
    f16_rows(1, N, K, x, w, out, n0, nf, 8, 1);
    f16_rows(1, N, K, x, w, out, nf, n1, 1, 1);
    return;
  }
  int nf = n0 + (n1 - n0) / 4 * 4, mf = M / 4 * 4;
  f16_rows(mf, N, K, x, w, out, n0, nf, 4, 4);
  f16_rows(mf, N, K, x, w, out, nf, n1, 1, 4);
  for (int m = mf; m < M; m++) f16_range(1, N, K, x + (int64_t)m * K, w, out + (int64_t)m * N, n0, n1);
}

/* out[M, N] = x[M, K] @ w[N, K]^T with F16 weights; K must be a multiple of 16 */
void nc_f16_gemm(int M, int N, int K, const float* x, const uint16_t* w, float* out) {
  int64_t work = (int64_t)M * N * K;
  #pragma omp parallel if (work > NC_PARALLEL_WORK)
  {
    int n0, n1;
    nc_thread_rows(N, &n0, &n1);
    f16_range(M, N, K, x, w, out, n0, n1);
  }
}

/* out[m, j] = x[m, :] . w[idx[m, j], :] for j < J: the exact F16 rescoring of the head's top
   candidates (network.Network.tied_head); summed exactly as nc_f16_gemm sums one row */
void nc_f16_gather_dot(int M, int J, int K, const int64_t* idx, const float* x, const uint16_t* w, float* out) {
  for (int m = 0; m < M; m++)
    for (int j = 0; j < J; j++)
      f16_rows(1, 1, K, x + (int64_t)m * K, w + idx[(int64_t)m * J + j] * K, out + (int64_t)m * J + j, 0, 1, 1, 1);
}

/* ---- int8 x int8 (the approximate head): per-row weight scales, per-token activation scales.
   Activations are stored offset by 128 as unsigned bytes xu (vpdpbusd is u8 x s8); every path
   computes the integer sum(xu * w), from which the epilogue removes 128 * wsum, except the AVX2
   path (NC_I8_SIGNED): its activations are stored as the signed values x (|x| <= 127) and
   multiplied as vpmaddubsw(|w|, sign(x, w)) (llama.cpp's Q8_0 trick: each s16 pair sum is at
   most 2 * 127 * 127 < 32767), so its sum is already sum(x * w): the same integers in the end. */
#if defined(NC_AVX2) && !defined(NC_AVXVNNI)
#define NC_I8_SIGNED 1
#else
#define NC_I8_SIGNED 0
#endif
AI void i8_tile(const uint8_t* xu, const int8_t* w, int64_t K, const int NR, const int MT, int32_t* acc) {
#if defined(NC_VNNI)
  __m512i va[16];
  _Pragma("GCC unroll 32") for (int j = 0; j < NR * MT; j++) va[j] = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += 64) {
    __m512i xv[4];
    _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++) xv[i] = _mm512_loadu_si512(xu + i * K + k);
    _Pragma("GCC unroll 32") for (int r = 0; r < NR; r++) {
      __m512i wv = _mm512_loadu_si512(w + r * K + k);
      _mm_prefetch((const char*)(w + (r + NR) * K + k), _MM_HINT_T0);  /* the next tile's rows */
      _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++) va[r * MT + i] = nc_dpbusd(va[r * MT + i], xv[i], wv);
    }
  }
  nc_hsums512(va, NR * MT, acc);
#elif defined(NC_AVX2)
  __m256i va[16];
  _Pragma("GCC unroll 32") for (int j = 0; j < NR * MT; j++) va[j] = _mm256_setzero_si256();
#if !defined(NC_AVXVNNI)
  const __m256i ones = _mm256_set1_epi16(1);
#endif
  for (int64_t k = 0; k < K; k += 32) {
    _Pragma("GCC unroll 32") for (int r = 0; r < NR; r++) {
      __m256i wv = _mm256_loadu_si256((const __m256i*)(w + r * K + k));
      _mm_prefetch((const char*)(w + (r + NR) * K + k), _MM_HINT_T0);  /* the next tile's rows */
#if defined(NC_AVXVNNI)
      _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++)
        va[r * MT + i] = _mm256_dpbusd_avx_epi32(va[r * MT + i], _mm256_loadu_si256((const __m256i*)(xu + i * K + k)), wv);
#else
      __m256i wa = _mm256_sign_epi8(wv, wv);  /* |w| */
      _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++)  /* xu holds signed values here */
        va[r * MT + i] = nc_i8_dot_add(va[r * MT + i], wa, wv, _mm256_loadu_si256((const __m256i*)(xu + i * K + k)), ones);
#endif
    }
  }
  nc_hsums256(va, NR * MT, acc);
#else
  for (int r = 0; r < NR; r++)
    for (int i = 0; i < MT; i++) {
      int32_t sum = 0;
      for (int64_t k = 0; k < K; k++) sum += (int32_t)xu[i * K + k] * w[r * K + k];
      acc[r * MT + i] = sum;
    }
#endif
}

AI void i8_rows(int M, int N, int K, const uint8_t* xu, const int8_t* w, const int32_t* wsum, const float* sw,
                const float* xs, float* out, int n0, int n1, const int NR, const int MT) {
  for (int n = n0; n + NR <= n1; n += NR)
    for (int m0 = 0; m0 + MT <= M; m0 += MT) {
      int32_t acc[16];
      i8_tile(xu + (int64_t)m0 * K, w + (int64_t)n * K, K, NR, MT, acc);
#if defined(NC_AVX512) || defined(NC_AVX2)
      if (MT == 4) {  /* 4 tokens at a time per weight row, the same operations as below */
        __m128 xs4 = _mm_loadu_ps(xs + m0);
        _Pragma("GCC unroll 16") for (int r = 0; r < NR; r++) {
          __m128i a = _mm_sub_epi32(_mm_loadu_si128((const __m128i*)(acc + 4 * r)), _mm_set1_epi32(NC_I8_SIGNED ? 0 : 128 * wsum[n + r]));
          float o[4];
          _mm_storeu_ps(o, _mm_div_ps(_mm_mul_ps(_mm_cvtepi32_ps(a), _mm_set1_ps(sw[n + r])), xs4));
          _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++) out[(int64_t)(m0 + i) * N + n + r] = o[i];
        }
        continue;
      }
#endif
      _Pragma("GCC unroll 32") for (int r = 0; r < NR; r++)
        _Pragma("GCC unroll 32") for (int i = 0; i < MT; i++)
          out[(int64_t)(m0 + i) * N + n + r] = (float)(acc[r * MT + i] - (NC_I8_SIGNED ? 0 : 128 * wsum[n + r])) * sw[n + r] / xs[m0 + i];
    }
}

#if defined(NC_VNNI)
/* One token, one row at a time, read front to back (see tern_rows_m1); K a multiple of 64. */
static void i8_rows_m1(int K, const uint8_t* xu, const int8_t* w, const int32_t* wsum, const float* sw,
                       float xs, float* out, int n0, int n1) {
  for (int n = n0; n < n1; n++) {
    const int8_t* wr = w + (int64_t)n * K;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    int k = 0;
    for (; k + 256 <= K; k += 256) {
      a0 = nc_dpbusd(a0, _mm512_loadu_si512(xu + k), _mm512_loadu_si512(wr + k));
      a1 = nc_dpbusd(a1, _mm512_loadu_si512(xu + k + 64), _mm512_loadu_si512(wr + k + 64));
      a2 = nc_dpbusd(a2, _mm512_loadu_si512(xu + k + 128), _mm512_loadu_si512(wr + k + 128));
      a3 = nc_dpbusd(a3, _mm512_loadu_si512(xu + k + 192), _mm512_loadu_si512(wr + k + 192));
    }
    for (; k < K; k += 64) a0 = nc_dpbusd(a0, _mm512_loadu_si512(xu + k), _mm512_loadu_si512(wr + k));
    int32_t acc = _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));
    out[n] = (float)(acc - 128 * wsum[n]) * sw[n] / xs;
  }
}
#endif

#if NC_I8_SIGNED
/* One token on AVX2, one row at a time read front to back, as i8_rows_m1; four accumulators over
   k keep the dot-product chains independent. The same integers as i8_tile's NC_I8_SIGNED path. */
static void i8_rows_m1_avx2(int K, const uint8_t* xu, const int8_t* w, const float* sw, float xs, float* out,
                            int n0, int n1) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int n = n0; n < n1; n++) {
    const int8_t* wr = w + (int64_t)n * K;
    __m256i a[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    int k = 0;
    for (; k + 128 <= K; k += 128)
      _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) {
        __m256i wv = _mm256_loadu_si256((const __m256i*)(wr + k + 32 * j));
        a[j] = nc_i8_dot_add(a[j], _mm256_sign_epi8(wv, wv), wv, _mm256_loadu_si256((const __m256i*)(xu + k + 32 * j)), ones);
      }
    for (; k < K; k += 32) {
      __m256i wv = _mm256_loadu_si256((const __m256i*)(wr + k));
      a[0] = nc_i8_dot_add(a[0], _mm256_sign_epi8(wv, wv), wv, _mm256_loadu_si256((const __m256i*)(xu + k)), ones);
    }
    int32_t acc = nc_hsum256(_mm256_add_epi32(_mm256_add_epi32(a[0], a[1]), _mm256_add_epi32(a[2], a[3])));
    out[n] = (float)acc * sw[n] / xs;
  }
}
#endif

static void i8_range(int M, int N, int K, const uint8_t* xu, const int8_t* w, const int32_t* wsum, const float* sw,
                     const float* xs, float* out, int n0, int n1) {
  if (M == 1) {
#if defined(NC_VNNI)
    i8_rows_m1(K, xu, w, wsum, sw, xs[0], out, n0, n1);
    return;
#elif NC_I8_SIGNED
    i8_rows_m1_avx2(K, xu, w, sw, xs[0], out, n0, n1);
    return;
#endif
    int nf = n0 + (n1 - n0) / 4 * 4;
    i8_rows(1, N, K, xu, w, wsum, sw, xs, out, n0, nf, 4, 1);
    i8_rows(1, N, K, xu, w, wsum, sw, xs, out, nf, n1, 1, 1);
    return;
  }
  int nf = n0 + (n1 - n0) / 4 * 4, mf = M / 4 * 4;
  i8_rows(mf, N, K, xu, w, wsum, sw, xs, out, n0, nf, 4, 4);
  i8_rows(mf, N, K, xu, w, wsum, sw, xs, out, nf, n1, 1, 4);
  for (int m = mf; m < M; m++)
    i8_range(1, N, K, xu + (int64_t)m * K, w, wsum, sw, xs + m, out + (int64_t)m * N, n0, n1);
}

/* out[M, N] ~ x[M, K] @ (w * sw)^T with int8 w [N, K] (K a multiple of 64): x is quantized per
   token to int8 and offset by 128 to be unsigned, the offset removed with wsum[n] = sum_k w[n, k].
   Scratch: xu[M*K], xs[M]. */
void nc_int8_gemm(int M, int N, int K, const float* x, const int8_t* w, const int32_t* wsum, const float* sw,
                  float* out, uint8_t* xu, float* xs) {
  for (int m = 0; m < M; m++) {
    const float* r = x + (int64_t)m * K;
    float a = nc_absmax16(r, K);
    if (a < 1e-30f) a = 1e-30f;
    float s = 127.f / a;
    xs[m] = s;
    for (int k = 0; k < K; k++) xu[(int64_t)m * K + k] = (uint8_t)((int)nearbyintf(r[k] * s) + (NC_I8_SIGNED ? 0 : 128));
  }
  int64_t work = (int64_t)M * N * K;
  #pragma omp parallel if (work > NC_PARALLEL_WORK)
  {
    int n0, n1;
    nc_thread_rows(N, &n0, &n1);
    i8_range(M, N, K, xu, w, wsum, sw, xs, out, n0, n1);
  }
}

/* ---- top-k of each row (the head's candidates for exact rescoring).
   idx[m, :k] = the indices of the k largest values of row m of x [M, N], largest first, ties to the
   lower index (k <= N). A lower bound t on the k-th largest comes first: the smallest of the maxima
   of k disjoint chunks (those k maxima are all >= t); only the values >= t (a few times k for
   logits) are then sorted. torch.topk on [8, 32000] took 0.34 ms, 4% of a batch-8 decode step. */
typedef struct { float v; int32_t i; } nc_cand;
static int topk_cmp(const void* a, const void* b) {
  const nc_cand *p = (const nc_cand*)a, *q = (const nc_cand*)b;
  int pn = p->v != p->v, qn = q->v != q->v;  /* descending, NaNs last, ties by index */
  if (pn != qn) return pn ? 1 : -1;
  if (!pn && p->v != q->v) return p->v < q->v ? 1 : -1;
  return p->i < q->i ? -1 : 1;
}

static void topk_row(int N, int k, const float* x, nc_cand* cand, int64_t* idx) {
  float t = INFINITY;
  for (int c = 0; c < k; c++) {
    int j0 = (int)((int64_t)N * c / k), j1 = (int)((int64_t)N * (c + 1) / k);
    float mx = nc_max(x + j0, j1 - j0, x[j0]);  /* chunk c's largest (vmaxps) */
    t = mx < t ? mx : t;
  }
  int n = 0;
  if (t == t) {
    /* the top k so far, kept sorted (descending, ties by index) in cand[0..n): a value enters
       where it belongs, the k-th drops out; t rises to the current k-th once k are held */
    for (int j = 0; j < N; j++) {
      float v = x[j];
      if (!(v >= t)) continue;
      if (n == k && !(v > cand[k - 1].v)) continue;  /* a tie with the k-th keeps the lower index */
      int at = n < k ? n : k - 1;
      while (at > 0 && v > cand[at - 1].v) { cand[at] = cand[at - 1]; at--; }
      cand[at] = (nc_cand){v, j};
      if (n < k) n++;
      if (n == k) t = cand[k - 1].v;
    }
  }
  if (n < k) {  /* NaNs hid the bound: sort the whole row */
    for (int j = 0; j < N; j++) cand[j] = (nc_cand){x[j], j};
    qsort(cand, N, sizeof *cand, topk_cmp);
  }
  for (int j = 0; j < k; j++) idx[j] = cand[j].i;
}

void nc_topk(int M, int N, int k, const float* x, int64_t* idx) {
  #pragma omp parallel if (M > 1 && (int64_t)M * N > (1 << 15))
  {
    nc_cand* cand = (nc_cand*)malloc(sizeof(nc_cand) * N);
    #pragma omp for schedule(static)
    for (int m = 0; m < M; m++) topk_row(N, k, x + (int64_t)m * N, cand, idx + (int64_t)m * k);
    free(cand);
  }
}
