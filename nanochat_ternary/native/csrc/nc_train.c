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
 *   nc_swiglu_bwd    the gradient of SwiGLU's silu(gate) * up
 *   nc_rope          the rotary embedding of q and k (forward), or its transpose (backward)
 *   nc_act_quant     per-row absmax fake quantisation: the same float operations, in the same order,
 *                    as bitlinear.quantize_activation, so the result is bit for bit the same
 *   nc_ternary_fake  clamp(round(w / s), -1, 1) * s with a scale per row and group of columns: the
 *                    same operations as bitlinear.ternarize + quantize_weight (the scale comes in)
 *   nc_ce_fwd/_bwd   the LM head's cross-entropy and predictive entropy per row, and their gradient
 *                    (train/ce_entropy.py): two passes forward, one backward
 *
 * The backward's sums run in 16 partial sums (they vectorise without -ffast-math), so its
 * gradients differ from PyTorch's autograd by float rounding only. Rows are split over the OpenMP
 * threads in fixed contiguous blocks and the weight gradient's per-thread partial sums are added
 * in thread order, so for a given thread count every result is deterministic (exact resume
 * relies on it).
 */
#include <string.h>

#include "nc_common.h"

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

/* Cross-entropy and entropy of logit rows z [N, V] with targets y [N] (train/ce_entropy.py). Per
   row, with d_j = z_j - max z and S = sum e^d_j:
     logS = log S,  nll = logS - d_y,  H = -sum p_j log p_j = logS - sum e^d_j d_j / S,
   log p_j = d_j - logS. Written here because PyTorch's CPU exp (and log_softmax's) leaves its vector
   path for arguments below about -87: on [512, 1024] logits spanning -160..0 exp took 4.3 ms
   instead of 0.06, and a language model's logits span that much within a few steps. nc_exp_neg
   clamps there (e^-87 ~ 1.6e-38 stands for the ~0 it replaces, far below a float's resolution of
   sums that are >= 1). The sums run in 16 lanes. A row holding a NaN gets a NaN nll and H (the
   clamp would otherwise hide it). mx, lse: [N] (max and logS), ent [N] or NULL. */
void nc_ce_fwd(int N, int V, const float* z, const int64_t* y, float* mx, float* lse, float* nll, float* ent) {
  #pragma omp parallel if ((int64_t)N * V > NC_ROWWISE_PARALLEL)
  {
    int n0, n1;
    nc_row_block(N, &n0, &n1);
    for (int n = n0; n < n1; n++) {
      const float* zr = z + (int64_t)n * V;
      float m = nc_max(zr, V, zr[0]);
      float s[16] = {0}, a[16] = {0};
      int j = 0;
      for (; j + 16 <= V; j += 16)
        for (int l = 0; l < 16; l++) {
          float d = zr[j + l] - m, e = nc_exp_neg(d);
          s[l] += e;
          a[l] += e * d;
        }
      for (; j < V; j++) {
        float d = zr[j] - m, e = nc_exp_neg(d);
        s[0] += e;
        a[0] += e * d;
      }
      float S = 0, A = 0;
      for (int l = 0; l < 16; l++) {
        S += s[l];
        A += a[l];
      }
      float logS = logf(S);
      mx[n] = m;
      lse[n] = logS;
      nll[n] = A != A ? A : logS - (zr[y[n]] - m);  /* A is NaN iff a logit is NaN (or +inf) */
      if (ent) ent[n] = logS - A / S;
    }
  }
}

/* gz [N, V] = p * (g_nll - g_ent * (log p + H)) - g_nll [j = y] (H NULL: p * g_nll - g_nll [j = y]),
   the gradient of g_nll * sum nll + g_ent * sum H, from nc_ce_fwd's mx and lse */
void nc_ce_bwd(int N, int V, const float* z, const int64_t* y, const float* mx, const float* lse, const float* ent,
               float g_nll, float g_ent, float* gz) {
  #pragma omp parallel if ((int64_t)N * V > NC_ROWWISE_PARALLEL)
  {
    int n0, n1;
    nc_row_block(N, &n0, &n1);
    for (int n = n0; n < n1; n++) {
      const float* zr = z + (int64_t)n * V;
      float* gr = gz + (int64_t)n * V;
      float m = mx[n], ls = lse[n];
      if (ent) {
        float h = ent[n];
        for (int j = 0; j < V; j++) {
          float lp = (zr[j] - m) - ls;
          gr[j] = ((lp + h) * -g_ent + g_nll) * nc_exp_neg(lp);
        }
      } else {
        for (int j = 0; j < V; j++) gr[j] = nc_exp_neg((zr[j] - m) - ls) * g_nll;
      }
      gr[y[n]] -= g_nll;
    }
  }
}

/* The gradient of SwiGLU's h = silu(g) * u for gu [N, 2F] (each row: the gate's F values, then the
   up projection's) and gh [N, F]: dgu [N, 2F] = [gh * u * silu'(g), gh * silu(g)] with
   silu'(g) = s (1 + g (1 - s)), s = sigmoid(g) (as PyTorch's silu_backward), in one pass where
   autograd ran three (PyTorch's silu_backward alone took 310 us on [512, 512] here: its exp leaves
   the vector path for large |g|; nc_exp_neg clamps instead). */
void nc_swiglu_bwd(int N, int F, const float* gu, const float* gh, float* dgu) {
  #pragma omp parallel if ((int64_t)N * F > NC_ROWWISE_PARALLEL)
  {
    int n0, n1;
    nc_row_block(N, &n0, &n1);
    for (int n = n0; n < n1; n++) {
      const float* g = gu + (int64_t)n * 2 * F;
      const float* d = gh + (int64_t)n * F;
      float* o = dgu + (int64_t)n * 2 * F;
      for (int j = 0; j < F; j++) {
        float x = g[j], e = nc_exp_neg(-fabsf(x));
        float s = (x >= 0.f ? 1.0f : e) / (1.0f + e);
        o[j] = d[j] * g[F + j] * (s * (1.0f + x * (1.0f - s)));
        o[F + j] = d[j] * (x * s);
      }
    }
  }
}

/* RoPE in the NEOX form (model/rope.py) over R rows of W = heads x hd values side by side (x: row
   stride ldx, so q and k can be read in place from the qkv projection's output); row r is at
   position r % T; cos, sin [T, hd] with each half repeated; out [R, W]. With h = hd / 2, per head:
     out[i] = x[i] cos[i] - x[i + h] sg sin[i],  out[i + h] = x[i + h] cos[i] + x[i] sg sin[i]
   sg = 1: the rotation, the same float operations as apply_rope's x * cos + rotate_half(x) * sin;
   sg = -1: its transpose, which is the backward (the gradient of x from the gradient of out). */
void nc_rope(int R, int T, int W, int hd, const float* x, int64_t ldx, const float* cos_t, const float* sin_t, float sg,
             float* out) {
  int h = hd / 2;
  #pragma omp parallel if ((int64_t)R * W > NC_ROWWISE_PARALLEL)
  {
    int r0, r1;
    nc_row_block(R, &r0, &r1);
    for (int r = r0; r < r1; r++) {
      const float* restrict c = cos_t + (int64_t)(r % T) * hd;
      const float* restrict sn = sin_t + (int64_t)(r % T) * hd;
      for (int base = 0; base + hd <= W; base += hd) {
        const float* restrict a = x + (int64_t)r * ldx + base;
        float* restrict o = out + (int64_t)r * W + base;
        for (int i = 0; i < h; i++) o[i] = a[i] * c[i] - a[i + h] * (sg * sn[i]);
        for (int i = 0; i < h; i++) o[i + h] = a[i + h] * c[i + h] + a[i] * (sg * sn[i + h]);
      }
    }
  }
}
