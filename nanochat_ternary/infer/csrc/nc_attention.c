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

/* 16 floats as one value: GCC lowers it to one zmm (AVX-512), two ymm (AVX2) or plain code, so
   one source serves every build; a row's sums run in the same order on each of them */
typedef float v16 __attribute__((vector_size(64)));
/* GCC warns that passing v16 by value has another ABI where AVX-512 is off: these helpers are
   static and inlined, never an ABI boundary */
#pragma GCC diagnostic ignored "-Wpsabi"
AI v16 ld16(const float* p) { v16 v; __builtin_memcpy(&v, p, sizeof v); return v; }
AI void st16(float* p, v16 v) { __builtin_memcpy(p, &v, sizeof v); }
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
AI float hsum16(v16 a) {  /* lanes l + 8, then + 4, + 2, + 1: a fixed tree */
  v8 lo, hi;
  __builtin_memcpy(&lo, &a, sizeof lo);
  __builtin_memcpy(&hi, (const char*)&a + sizeof lo, sizeof hi);
  v8 s8 = lo + hi;
  v4 l4, h4;
  __builtin_memcpy(&l4, &s8, sizeof l4);
  __builtin_memcpy(&h4, (const char*)&s8 + sizeof l4, sizeof h4);
  v4 s4 = l4 + h4;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

/* e^x for the softmax (x <= 0 there): Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2, and
   Cephes' degree-7 polynomial for e^r (about 1 ulp, as the Cephes expf), then 2^k from the exponent
   bits. Written to vectorise: libm's expf, one call per score, was most of the attention's time. */
AI float exp_neg(float x) {
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

/* one kv group of one row: its G query heads q [G, hd] (RoPE applied) over keys/values 0..n-1
   (kb, vb: [cap, hd]); every key and value is loaded once for all G heads. p: [G, n] scratch,
   o: [G, hd] output. hd a multiple of 16 (else scalar loops, same maths). */
static void attend_group(int G, int hd, int n, float scale, const float* q, const float* kb, const float* vb, float* p, float* o) {
  int vec = hd % 16 == 0;
  for (int j = 0; j < n; j++) {
    const float* k = kb + (int64_t)j * hd;
    for (int h = 0; h < G; h++) {
      const float* qh = q + h * hd;
      float d;
      if (vec) {
        v16 acc = ld16(qh) * ld16(k);
        for (int i = 16; i < hd; i += 16) acc += ld16(qh + i) * ld16(k + i);
        d = hsum16(acc);
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
    for (int j = 0; j < n; j++) ph[j] = exp_neg(ph[j] - mx);
    for (int j = 0; j < n; j++) sum += ph[j];
    float inv = 1.0f / sum;
    for (int j = 0; j < n; j++) ph[j] *= inv;
  }
  for (int h = 0; h < G; h++) {
    const float* ph = p + h * n;
    float* oh = o + h * hd;
    if (vec) {  /* 64 outputs at a time in registers (a sum kept in memory waits on its own store) */
      for (int i0 = 0; i0 < hd; i0 += 64) {
        int c = hd - i0 < 64 ? (hd - i0) / 16 : 4;
        v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int j = 0; j < n; j++) {
          const float* v = vb + (int64_t)j * hd + i0;
          float w = ph[j];
          v16 wv = {w, w, w, w, w, w, w, w, w, w, w, w, w, w, w, w};
          a0 += wv * ld16(v);
          if (c > 1) a1 += wv * ld16(v + 16);
          if (c > 2) a2 += wv * ld16(v + 32);
          if (c > 3) a3 += wv * ld16(v + 48);
        }
        st16(oh + i0, a0);
        if (c > 1) st16(oh + i0 + 16, a1);
        if (c > 2) st16(oh + i0 + 32, a2);
        if (c > 3) st16(oh + i0 + 48, a3);
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
