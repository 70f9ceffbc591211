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
   slot[r]; caches [slots, KV, cap, hd]. RoPE is NEOX "rotate half" (model/rope.py) with tables
   cos/sin [n_ctx, hd]. All rows are written first (a prefill row sees the rows before it), then
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

/* one kv group of one row: its G query heads q [G, hd] (RoPE applied) over keys/values 0..n-1
   (kb, vb: [cap, hd]); every key and value is loaded once for all G heads. p: [G, n] scratch,
   o: [G, hd] output. hd a multiple of VW (else scalar loops, same maths). */
static void attend_group(int G, int hd, int n, float scale, const float* q, const float* kb, const float* vb, float* p, float* o) {
  int vec = hd % VW == 0;
  for (int j = 0; j < n; j++) {
    const float* k = kb + (int64_t)j * hd;
    for (int h = 0; h < G; h++) {
      const float* qh = q + h * hd;
      float d;
      if (vec) {
        vf acc = ldv(qh) * ldv(k);
        for (int i = VW; i < hd; i += VW) acc += ldv(qh + i) * ldv(k + i);
        d = hsumv(acc);
      } else {
        d = 0.f;
        for (int i = 0; i < hd; i++) d += qh[i] * k[i];
      }
      p[h * n + j] = d * scale;
    }
  }
  for (int h = 0; h < G; h++) {
    float* ph = p + h * n;
    float mx = -INFINITY, sum = 0.f;
    for (int j = 0; j < n; j++) mx = ph[j] > mx ? ph[j] : mx;
    for (int j = 0; j < n; j++) ph[j] = nc_exp_neg(ph[j] - mx);
    for (int j = 0; j < n; j++) sum += ph[j];
    float inv = 1.0f / sum;
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
          const float* v = vb + (int64_t)j * hd + i0;
          vf wv = (vf){0} + ph[j];
          a0 += wv * ldv(v);
          if (c > 1) a1 += wv * ldv(v + VW);
          if (c > 2) a2 += wv * ldv(v + 2 * VW);
          if (c > 3) a3 += wv * ldv(v + 3 * VW);
        }
        stv(oh + i0, a0);
        if (c > 1) stv(oh + i0 + VW, a1);
        if (c > 2) stv(oh + i0 + 2 * VW, a2);
        if (c > 3) stv(oh + i0 + 3 * VW, a3);
      }
    } else {
      for (int i = 0; i < hd; i++) oh[i] = 0.f;
      for (int j = 0; j < n; j++)
        for (int i = 0; i < hd; i++) oh[i] += ph[j] * vb[(int64_t)j * hd + i];
    }
  }
}

void nc_attention(int R, int H, int KV, int hd, int cap, const float* qkv, const int64_t* slot, const int64_t* pos,
                  const float* cos_t, const float* sin_t, float* kc, float* vc, float* out) {
  int row = (H + 2 * KV) * hd;
  for (int r = 0; r < R; r++) {
    const float* src = qkv + (int64_t)r * row;
    for (int h = 0; h < KV; h++) {
      float* kd = kc + (((int64_t)slot[r] * KV + h) * cap + pos[r]) * hd;
      float* vd = vc + (((int64_t)slot[r] * KV + h) * cap + pos[r]) * hd;
      for (int i = 0; i < hd; i++) { kd[i] = src[(H + h) * hd + i]; vd[i] = src[(H + KV + h) * hd + i]; }
      rope_row(kd, hd, cos_t + pos[r] * hd, sin_t + pos[r] * hd);
    }
  }
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
      attend_group(G, hd, n, scale, q, kc + ((int64_t)slot[r] * KV + g) * cap * hd, vc + ((int64_t)slot[r] * KV + g) * cap * hd,
                   p, out + (int64_t)r * H * hd + g * G * hd);
    }
    free(p);
  }
}
