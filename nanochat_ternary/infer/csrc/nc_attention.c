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
   every row attends over positions 0..pos[r] of its slot; rows are independent (OpenMP). */
static void rope_row(float* x, int hd, const float* c, const float* s) {
  int half = hd / 2;
  for (int i = 0; i < half; i++) {
    float x1 = x[i], x2 = x[i + half];
    x[i] = x1 * c[i] + (-x2) * s[i];
    x[i + half] = x2 * c[i + half] + x1 * s[i + half];
  }
}

/* dot product in 16 independent lanes (vectorisable, and the same order for every row) */
static inline float dot16(const float* a, const float* b, int n) {
  float lane[16] = {0};
  int i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; l++) lane[l] += a[i + l] * b[i + l];
  float d = 0.f;
  for (; i < n; i++) d += a[i] * b[i];
  for (int l = 0; l < 16; l++) d += lane[l];
  return d;
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
  int64_t work = 0;  /* multiply-adds of scores and weighted sums (an expf per score on top) */
  for (int r = 0; r < R; r++) work += 2 * (int64_t)H * (pos[r] + 1) * hd;
  #pragma omp parallel if (work > NC_PARALLEL_WORK / 8)
  {
    int maxlen = 0;
    for (int r = 0; r < R; r++) maxlen = pos[r] + 1 > maxlen ? pos[r] + 1 : maxlen;
    float* p = (float*)malloc(sizeof(float) * (maxlen + hd));
    float* q = p + maxlen;
    #pragma omp for schedule(static)
    for (int rh = 0; rh < R * H; rh++) {
      int r = rh / H, h = rh % H, g = h / (H / KV), n = pos[r] + 1;
      for (int i = 0; i < hd; i++) q[i] = qkv[(int64_t)r * row + h * hd + i];
      rope_row(q, hd, cos_t + pos[r] * hd, sin_t + pos[r] * hd);
      const float* kb = kc + ((int64_t)slot[r] * KV + g) * cap * hd;
      const float* vb = vc + ((int64_t)slot[r] * KV + g) * cap * hd;
      float mx = -INFINITY;
      for (int j = 0; j < n; j++) {
        p[j] = dot16(q, kb + (int64_t)j * hd, hd) * scale;
        mx = p[j] > mx ? p[j] : mx;
      }
      float sum = 0.f;
      for (int j = 0; j < n; j++) { p[j] = expf(p[j] - mx); sum += p[j]; }
      float inv = 1.0f / sum;
      float* o = out + (int64_t)r * H * hd + h * hd;
      for (int i = 0; i < hd; i++) o[i] = 0.f;
      for (int j = 0; j < n; j++) {
        float w = p[j] * inv;
        const float* v = vb + (int64_t)j * hd;
        for (int i = 0; i < hd; i++) o[i] += w * v[i];
      }
    }
    free(p);
  }
}
