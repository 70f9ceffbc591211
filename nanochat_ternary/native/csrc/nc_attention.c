/* Attention for the engine's decode and prefill: RoPE, KV-cache write and softmax attention.
 *
 * Per decoded token and layer, attention in PyTorch ops (RoPE, cache write, grouped-query
 * scores, softmax, weighted sum) is a dozen tiny tensor ops whose dispatch costs more than their
 * maths; one C call does it all. Each query row is computed on its own, by the same code whatever
 * the other rows are, which keeps a token's logits bitwise independent of batching.
 */
#include "nc_common.h"
/* ---- attention: RoPE, KV-cache write and softmax attention, one query row at a time.
   qkv [R, (H + 2 KV) * hd] rows (q heads, k heads, v heads) at positions pos[r] of cache slots
   slot[r]; caches [slots, KV, cap, hd] of float32, or of F16 with f16 (keys rounded after RoPE;
   scores, softmax and sums in float32 either way). RoPE is NEOX "rotate half" (model/rope.py)
   with tables cos/sin [n_ctx, hd]. All rows are written first (a prefill row sees the rows before it), then
   every row attends over positions 0..pos[r] of its slot; rows and kv groups are independent (OpenMP). */
static void rope_row(float* x, int hd, const float* c, const float* s) {
  int half = hd / 2;
  for (int i = 0; i < half; i++) {
    float x1 = x[i], x2 = x[i + half];
    x[i] = x1 * c[i] + (-x2) * s[i];
    x[i + half] = x2 * c[i + half] + x1 * s[i + half];
  }
}

/* VW floats as one value, VW the build's vector width (16: AVX-512, 8: AVX2, 4: SSE2 / NEON), so
   one source serves every build (wider GCC vectors on a narrower ISA go through memory: 4-5x
   slower, measured). A row's sums run in the same order whatever the batch. */
#if defined(NC_AVX512)
#define VW 16
#elif defined(NC_AVX2)
#define VW 8
#else
#define VW 4
#endif
typedef float vf __attribute__((vector_size(VW * 4)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
/* GCC warns that passing wide vectors by value has another ABI where the ISA lacks them: these
   helpers are static and inlined, never an ABI boundary */
#pragma GCC diagnostic ignored "-Wpsabi"
AI vf ldv(const float* p) { vf v; __builtin_memcpy(&v, p, sizeof v); return v; }
/* the cache holds float32 or F16 (KVPool's dtype); an F16 cache's values become floats as they
   load: vcvtph2ps (F16C) on VW of them at once (GCC 12 converts a _Float16 vector one lane at
   a time without AVX512-FP16), one by one in the portable build */
AI vf ldkv(const void* c, int64_t i, int f16) {
  if (!f16) return ldv((const float*)c + i);
  const _Float16* h = (const _Float16*)c + i;
#if VW == 16
  return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)h));
#elif VW == 8
  return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)h));
#else
  vf v;
  for (int l = 0; l < VW; l++) v[l] = (float)h[l];
  return v;
#endif
}
AI float kv1(const void* c, int64_t i, int f16) { return f16 ? (float)((const _Float16*)c)[i] : ((const float*)c)[i]; }
AI void stv(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
AI float hsumv(vf a) {  /* halves added until 4 lanes are left, then (0 + 2) + (1 + 3) */
#if VW == 16
  v8 lo, hi;
  __builtin_memcpy(&lo, &a, sizeof lo);
  __builtin_memcpy(&hi, (const char*)&a + sizeof lo, sizeof hi);
  v8 b = lo + hi;
#elif VW == 8
  v8 b = a;
#endif
#if VW >= 8
  v4 l4, h4;
  __builtin_memcpy(&l4, &b, sizeof l4);
  __builtin_memcpy(&h4, (const char*)&b + sizeof l4, sizeof h4);
  v4 s4 = l4 + h4;
#else
  v4 s4 = a;
#endif
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

/* sum of x[0..n) in VW lane sums (hsumv), then the tail: the order depends on n alone */
AI float lane_sum(const float* x, int n) {
  vf a = {0};
  int j = 0;
  for (; j + VW <= n; j += VW) a += ldv(x + j);
  float s = hsumv(a);
  for (; j < n; j++) s += x[j];
  return s;
}

/* one kv group of one row: its G query heads q [G, hd] (RoPE applied) over keys/values 0..n-1
   (kb, vb: [cap, hd], float32 or F16); every key and value is loaded once for all G heads. p:
   [G, n] scratch, o: [G, hd] output. hd a multiple of VW (else scalar loops, same maths). Inlined
   into one copy per cache type (attend_f32, attend_f16). */
/* q . key (the key starting at element k of kb) in VW lane sums, hd a multiple of VW */
AI vf qk_lanes(const float* q, const void* kb, int64_t k, int hd, int f16) {
  vf a = ldv(q) * ldkv(kb, k, f16);
  for (int i = VW; i < hd; i += VW) a += ldv(q + i) * ldkv(kb, k + i, f16);
  return a;
}

AI void attend_group(int G, int hd, int n, float scale, const float* q, const void* kb, const void* vb, float* p, float* o,
                     const int f16) {
  int vec = hd % VW == 0, j = 0;
#if VW >= 8
  /* VW keys at a time: their VW scores are added across lanes together (nc_hsum16x16_ps /
     nc_hsum8x8_ps), not one horizontal sum per score; which keys go this way depends on n alone,
     so a row's scores are the same whatever the batch */
  if (vec)
    for (; j + VW <= n; j += VW)
      for (int h = 0; h < G; h++) {
        const float* qh = q + h * hd;
        vf acc[VW];
        _Pragma("GCC unroll 16") for (int t = 0; t < VW; t++) acc[t] = qk_lanes(qh, kb, (int64_t)(j + t) * hd, hd, f16);
#if VW == 16
        vf d = (vf)nc_hsum16x16_ps((const __m512*)acc);
#else
        vf d = (vf)nc_hsum8x8_ps((const __m256*)acc);
#endif
        stv(p + h * n + j, d * scale);
      }
#endif
  for (; j < n; j++) {
    int64_t k = (int64_t)j * hd;
    for (int h = 0; h < G; h++) {
      const float* qh = q + h * hd;
      float d;
      if (vec) {
        d = hsumv(qk_lanes(qh, kb, k, hd, f16));
      } else {
        d = 0.f;
        for (int i = 0; i < hd; i++) d += qh[i] * kv1(kb, k + i, f16);
      }
      p[h * n + j] = d * scale;
    }
  }
  for (int h = 0; h < G; h++) {
    float* ph = p + h * n;
    float mx = nc_max(ph, n, -INFINITY);  /* exact in any order */
    for (int j = 0; j < n; j++) ph[j] = nc_exp_neg(ph[j] - mx);
    float inv = 1.0f / lane_sum(ph, n);
    for (int j = 0; j < n; j++) ph[j] *= inv;
  }
  for (int h = 0; h < G; h++) {
    const float* ph = p + h * n;
    float* oh = o + h * hd;
    if (vec) {  /* 4 VW outputs at a time in registers (a sum kept in memory waits on its own store) */
      for (int i0 = 0; i0 < hd; i0 += 4 * VW) {
        int c = hd - i0 < 4 * VW ? (hd - i0) / VW : 4;
        vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int j = 0; j < n; j++) {
          int64_t v = (int64_t)j * hd + i0;
          vf wv = (vf){0} + ph[j];
          a0 += wv * ldkv(vb, v, f16);
          if (c > 1) a1 += wv * ldkv(vb, v + VW, f16);
          if (c > 2) a2 += wv * ldkv(vb, v + 2 * VW, f16);
          if (c > 3) a3 += wv * ldkv(vb, v + 3 * VW, f16);
        }
        stv(oh + i0, a0);
        if (c > 1) stv(oh + i0 + VW, a1);
        if (c > 2) stv(oh + i0 + 2 * VW, a2);
        if (c > 3) stv(oh + i0 + 3 * VW, a3);
      }
    } else {
      for (int i = 0; i < hd; i++) oh[i] = 0.f;
      for (int j = 0; j < n; j++)
        for (int i = 0; i < hd; i++) oh[i] += ph[j] * kv1(vb, (int64_t)j * hd + i, f16);
    }
  }
}
static void attend_f32(int G, int hd, int n, float scale, const float* q, const void* kb, const void* vb, float* p, float* o) {
  attend_group(G, hd, n, scale, q, kb, vb, p, o, 0);
}
static void attend_f16(int G, int hd, int n, float scale, const float* q, const void* kb, const void* vb, float* p, float* o) {
  attend_group(G, hd, n, scale, q, kb, vb, p, o, 1);
}

void nc_attention(int R, int H, int KV, int hd, int cap, const float* qkv, const int64_t* slot, const int64_t* pos,
                  const float* cos_t, const float* sin_t, void* kc, void* vc, int f16, float* out) {
  int row = (H + 2 * KV) * hd;
  float kt[hd];  /* a key with RoPE applied, in float32 */
  for (int r = 0; r < R; r++) {
    const float* src = qkv + (int64_t)r * row;
    for (int h = 0; h < KV; h++) {
      int64_t at = (((int64_t)slot[r] * KV + h) * cap + pos[r]) * hd;
      for (int i = 0; i < hd; i++) kt[i] = src[(H + h) * hd + i];
      rope_row(kt, hd, cos_t + pos[r] * hd, sin_t + pos[r] * hd);
      const float* v = src + (H + KV + h) * hd;
      if (f16) {  /* rounded to nearest even, as torch's float16 conversion */
        for (int i = 0; i < hd; i++) { ((_Float16*)kc)[at + i] = (_Float16)kt[i]; ((_Float16*)vc)[at + i] = (_Float16)v[i]; }
      } else {
        for (int i = 0; i < hd; i++) { ((float*)kc)[at + i] = kt[i]; ((float*)vc)[at + i] = v[i]; }
      }
    }
  }
  int64_t es = f16 ? 2 : 4;  /* bytes per cached value */
  float scale = 1.0f / sqrtf((float)hd);
  int G = H / KV;  /* query heads per kv head (grouped-query attention) */
  int64_t work = 0;  /* multiply-adds of scores and weighted sums (an expf per score on top) */
  for (int r = 0; r < R; r++) work += 2 * (int64_t)H * (pos[r] + 1) * hd;
  #pragma omp parallel if (work > NC_PARALLEL_WORK / 8)
  {
    int maxlen = 0;
    for (int r = 0; r < R; r++) maxlen = pos[r] + 1 > maxlen ? pos[r] + 1 : maxlen;
    float* p = (float*)malloc(sizeof(float) * ((int64_t)G * maxlen + G * hd));
    float* q = p + (int64_t)G * maxlen;
    #pragma omp for schedule(static)
    for (int rg = 0; rg < R * KV; rg++) {
      int r = rg / KV, g = rg % KV, n = pos[r] + 1;
      for (int h = 0; h < G; h++) {
        float* qh = q + h * hd;
        for (int i = 0; i < hd; i++) qh[i] = qkv[(int64_t)r * row + (g * G + h) * hd + i];
        rope_row(qh, hd, cos_t + pos[r] * hd, sin_t + pos[r] * hd);
      }
      int64_t at = ((int64_t)slot[r] * KV + g) * cap * hd * es;
      (f16 ? attend_f16 : attend_f32)(G, hd, n, scale, q, (const char*)kc + at, (const char*)vc + at, p,
                                      out + (int64_t)r * H * hd + g * G * hd);
    }
    free(p);
  }
}
