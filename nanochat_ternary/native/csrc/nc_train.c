/* Row-wise kernels for the training step on a CPU (model/native_ops.py calls them).
 *
 * At the tiny config's widths a training step runs ~3,500 PyTorch ops, and the ones that are not
 * matmuls cost mostly their per-op overhead: nn.RMSNorm's CPU path is a chain of pow/mean/rsqrt/mul
 * whose autograd backward is a dozen more, and each quantizer is a chain of 4-7 elementwise ops.
 * Each function here is one pass over the rows instead.
 *
 *   nc_rmsnorm_bwd   RMSNorm's backward: for y = x * r * w with r = 1 / sqrt(mean(x^2) + eps) per row
 *                    (the forward is PyTorch's own, which also returns r),
 *                    gx = r * g * w - x * r^3 * sum(g * w * x) / D,  gw = sum over rows of g * x * r
 *   nc_act_quant     per-row absmax fake quantisation: the same float operations, in the same order,
 *                    as bitlinear.quantize_activation, so the result is bit for bit the same
 *   nc_ternary_fake  clamp(round(w / s), -1, 1) * s with a scale per row and group of columns: the
 *                    same operations as bitlinear.ternarize + quantize_weight (the scale comes in)
 *
 * The backward's sums run in 16 partial sums (they vectorise without -ffast-math), so its
 * gradients differ from PyTorch's autograd by float rounding only. Rows are split over the OpenMP
 * threads in fixed contiguous blocks and the weight gradient's per-thread partial sums are added
 * in thread order, so for a given thread count every result is deterministic (exact resume
 * relies on it).
 */
#include <string.h>

#include "nc_common.h"

/* below this many elements one thread is faster than waking the others */
#define NC_ROWWISE_PARALLEL (1 << 15)

/* this thread's contiguous block [n0, n1) of N rows */
static void nc_row_block(int N, int* n0, int* n1) {
  int t = omp_get_thread_num(), T = omp_get_num_threads();
  int per = (N + T - 1) / T;
  *n0 = t * per < N ? t * per : N;
  *n1 = *n0 + per < N ? *n0 + per : N;
}

/* g (the gradient of y), gx [N, D]; gw [D] or NULL (not wanted); T threads (the caller's count, so
   that it sizes scratch: T * D floats for the per-thread partial sums of gw). gx may alias g. */
void nc_rmsnorm_bwd(int N, int D, int T, const float* x, const float* w, const float* rstd, const float* g, float* gx,
                    float* gw, float* scratch) {
  if ((int64_t)N * D <= NC_ROWWISE_PARALLEL || T < 1) T = 1;
  if (gw) memset(scratch, 0, sizeof(float) * (size_t)T * D);  /* all T: OpenMP may start fewer threads */
  #pragma omp parallel num_threads(T)
  {
    int n0, n1, t = omp_get_thread_num();
    nc_row_block(N, &n0, &n1);
    float* part = scratch + (int64_t)t * D;
    for (int n = n0; n < n1; n++) {
      const float* xr = x + (int64_t)n * D;
      const float* gr = g + (int64_t)n * D;
      float* gxr = gx + (int64_t)n * D;
      float r = rstd[n];
      if (gw)  /* before gx overwrites g */
        for (int j = 0; j < D; j++) part[j] += gr[j] * (xr[j] * r);
      /* gx holds g * w first (the product the dot and the result share), then the gradient */
      for (int j = 0; j < D; j++) gxr[j] = w ? gr[j] * w[j] : gr[j];
      float c = r * r * r * nc_dot16(gxr, xr, D) / (float)D;
      for (int j = 0; j < D; j++) gxr[j] = r * gxr[j] - xr[j] * c;
    }
  }
  if (gw) {
    memcpy(gw, scratch, sizeof(float) * D);
    for (int t = 1; t < T; t++)
      for (int j = 0; j < D; j++) gw[j] += scratch[(int64_t)t * D + j];
  }
}

/* x, out [N, D]; q = 2^(bits-1) - 1. As quantize_activation: scale = q / max(absmax, eps), which
   PyTorch evaluates as reciprocal(absmax) * q; round half to even (nearbyintf in the default
   rounding mode, as torch.round); clamp to [-q-1, q]; divide by the scale. */
void nc_act_quant(int N, int D, const float* x, float q, float eps, float* out) {
  #pragma omp parallel if ((int64_t)N * D > NC_ROWWISE_PARALLEL)
  {
    int n0, n1;
    nc_row_block(N, &n0, &n1);
    for (int n = n0; n < n1; n++) {
      const float* xr = x + (int64_t)n * D;
      float* o = out + (int64_t)n * D;
      float hi[16], lo[16];
      int j = nc_minmax16(xr, D, xr[0], hi, lo);
      float a = hi[0], b = lo[0];
      for (int l = 1; l < 16; l++) {
        a = hi[l] > a ? hi[l] : a;
        b = lo[l] < b ? lo[l] : b;
      }
      for (; j < D; j++) {
        a = xr[j] > a ? xr[j] : a;
        b = xr[j] < b ? xr[j] : b;
      }
      float absmax = a > -b ? a : -b;
      float s = (1.0f / (absmax > eps ? absmax : eps)) * q;
      for (int k = 0; k < D; k++) {
        float v = nearbyintf(xr[k] * s);
        v = v < -q - 1 ? -q - 1 : v;
        v = v > q ? q : v;
        o[k] = v / s;
      }
    }
  }
}

/* w, out [R, C]; scale: one value (per_tensor) or [R, C / G], one per row and group of G columns */
void nc_ternary_fake(int R, int C, int G, const float* w, const float* scale, int per_tensor, float* out) {
  int ng = C / G;
  #pragma omp parallel if ((int64_t)R * C > NC_ROWWISE_PARALLEL)
  {
    int r0, r1;
    nc_row_block(R, &r0, &r1);
    for (int r = r0; r < r1; r++)
      for (int g = 0; g < ng; g++) {
        const float* wr = w + (int64_t)r * C + (int64_t)g * G;
        float* o = out + (int64_t)r * C + (int64_t)g * G;
        float s = per_tensor ? scale[0] : scale[(int64_t)r * ng + g];
        /* clamp, then round: the same value as round, then clamp (as bitlinear.py does) for every
           input, and GCC 12 vectorises it for AVX2 (the other order stayed scalar there: 5x slower) */
        for (int k = 0; k < G; k++) {
          float v = wr[k] / s;
          v = v < -1.0f ? -1.0f : v;
          v = v > 1.0f ? 1.0f : v;
          o[k] = nearbyintf(v) * s;
        }
      }
  }
}
