/* The whole trunk of an attention model (no DeltaNet, no MoE) in one call: for every layer,
 * x += o(attention(qkv(x))) then x += down(swiglu(gate_up(x))) with one residual stream, or the
 * same layer between mHC's stream mixes with n streams (model/mhc.py, network.Network.trunk).
 *
 * network.py runs the same layers as Python calls into these same kernels. At batch 1 a decode
 * step's kernels take about 1.2 ms on a nano model (AVX2), and the Python around them (about
 * 60 calls a token through ctypes, each converting a dozen arguments, plus the residual adds and
 * the tensors they allocate) took 0.5-0.8 ms more. One call per step removes that overhead. The
 * arithmetic is the Python path's: the same kernels in the same order, and the residual add is a
 * float add per element, so both paths give the same bits (tests/test_infer_trunk.py).
 *
 * The plan (built by network.native_trunk_plan) is an int64 table, one row of NC_PLAN_FIELDS per
 * layer: four norm gains (pointers; 0 for none), then four projections qkv, o, gate_up, down of
 * five fields each: packed weights, scales, N (outputs), K (inputs), G (scale groups), then mHC's
 * H_pre [n], H_res [n, n] and H_post [n] (float32 pointers; 0 with one stream). The KV
 * cache pointers come per call ([layers, 2]: keys, values), since the cache moves when it grows.
 */
#include "nc_common.h"

enum { NC_ATTN_NORM, NC_ATTN_SUB_NORM, NC_FFN_NORM, NC_FFN_SUB_NORM, NC_QKV, NC_O = NC_QKV + 5,
       NC_GATE_UP = NC_O + 5, NC_DOWN = NC_GATE_UP + 5, NC_H_PRE = NC_DOWN + 5, NC_H_RES, NC_H_POST, NC_PLAN_FIELDS };

#define NC_PTR(T, v) ((T)(intptr_t)(v))
#define NC_ALIGN64(n) (((n) + 63) / 64 * 64)

/* bytes of one ternary projection's kernel scratch for M rows of K inputs and G groups, laid out
   as kernels.ternary_matmul lays it out: xn floats | xq bytes (64-aligned) | xs | xsum */
static int64_t proj_scratch(int64_t M, int64_t K, int64_t G) {
  return 4 * M * K + NC_ALIGN64(M * K) + 4 * M + 4 * M * G;
}

static void proj(const int64_t* p, int M, const float* x, const float* nw, float eps, int glu, int Q,
                 float* out, char* s) {
  int N = (int)p[2], K = (int)p[3], G = (int)p[4];
  int8_t* xq = (int8_t*)(s + 4 * (int64_t)M * K);
  float* xs = (float*)((char*)xq + NC_ALIGN64((int64_t)M * K));
  nc_ternary_gemm(M, N, K, x, nw, eps, glu, NC_PTR(const uint8_t*, p[0]), NC_PTR(const float*, p[1]), G, Q, out,
                  (float*)s, xq, xs, (int32_t*)(xs + M));
}

/* One layer's scratch, from `base` (64-aligned) on: the qkv projection's output, the attention
   output (the o projection's input), the o output, the gate|up output, the down output, with n
   streams the layer input h, h + a and the new streams [n, D] a row, then the kernels' scratch;
   returns the bytes used. Pointers are written only when `at` is given. */
static int64_t layer_layout(int M, int n, const int64_t* row, char* base, float** at) {
  int64_t D = row[NC_O + 2];
  int64_t per_row[8] = {row[NC_QKV + 2], row[NC_O + 3], D, row[NC_GATE_UP + 2], row[NC_DOWN + 2], 0, 0, 0};
  if (n > 1) { per_row[5] = D; per_row[6] = D; per_row[7] = n * D; }
  int64_t off = 0, kern = 0;
  for (int j = 0; j < 8; j++) {
    if (at) at[j] = (float*)(base + off);
    off += NC_ALIGN64(4 * (int64_t)M * per_row[j]);
  }
  for (int j = NC_QKV; j <= NC_DOWN; j += 5) {
    int64_t k = proj_scratch(M, row[j + 3], row[j + 4]);
    kern = k > kern ? k : kern;
  }
  if (at) at[8] = (float*)(base + off);
  return off + kern;
}

/* the scratch nc_trunk needs for M rows (the largest layer's, plus alignment) */
int64_t nc_trunk_scratch_bytes(int M, int n, int L, const int64_t* plan) {
  int64_t most = 0;
  for (int l = 0; l < L; l++) {
    int64_t b = layer_layout(M, n, plan + (int64_t)l * NC_PLAN_FIELDS, NULL, NULL);
    most = b > most ? b : most;
  }
  return most + 64;
}

/* out = sum_j c[j] * in[j] over n vectors of D floats (stride D), products rounded first and
   summed in order: the float operations of torch's (c[:, None] * X).sum(0) */
static void mix_row(int n, int64_t D, const float* c, const float* in, float* out) {
  for (int64_t i = 0; i < D; i++) {
    float s = c[0] * in[i];
    for (int j = 1; j < n; j++) s += c[j] * in[(int64_t)j * D + i];
    out[i] = s;
  }
}

/* X [M, n, D] (float32, updated in place): the rows' residual streams after every layer (n = 1:
   the residual stream). Rows sit at positions pos[r] of KV-cache slots slot[r] (as nc_attention);
   kv [L, 2] the layers' caches of capacity cap (F16 with kv_f16, else float32); scratch as
   nc_trunk_scratch_bytes says. Q: the activation quantizer's max. With n > 1 each layer is
   network.Network.trunk's mHC step: h = H_pre X, a = attention(h), f = ffn(h + a),
   X = H_res X + H_post (a + f). */
void nc_trunk(int M, int n, int L, const int64_t* plan, const int64_t* kv, int H, int KV, int hd, int cap,
              const int64_t* slot, const int64_t* pos, const float* cos_t, const float* sin_t, float eps, int Q,
              int kv_f16, float* X, char* scratch) {
  char* base = (char*)(((uintptr_t)scratch + 63) / 64 * 64);
  for (int l = 0; l < L; l++) {
    const int64_t* row = plan + (int64_t)l * NC_PLAN_FIELDS;
    float* r[9];
    layer_layout(M, n, row, base, r);
    float *qkv = r[0], *att = r[1], *o = r[2], *gu = r[3], *d = r[4], *h = r[5], *hf = r[6], *nx = r[7];
    char* ks = (char*)r[8];
    int64_t D = row[NC_O + 2], MD = (int64_t)M * D;
    const float *pre = NC_PTR(const float*, row[NC_H_PRE]), *res = NC_PTR(const float*, row[NC_H_RES]);
    const float* post = NC_PTR(const float*, row[NC_H_POST]);
    /* the layer's input: the residual stream itself, or H_pre's mix of the streams */
    const float* in = X;
    if (n > 1) {
      for (int m = 0; m < M; m++) mix_row(n, D, pre, X + (int64_t)m * n * D, h + (int64_t)m * D);
      in = h;
    }
    proj(row + NC_QKV, M, in, NC_PTR(const float*, row[NC_ATTN_NORM]), eps, 0, Q, qkv, ks);
    nc_attention(M, H, KV, hd, cap, qkv, slot, pos, cos_t, sin_t, NC_PTR(void*, kv[2 * l]), NC_PTR(void*, kv[2 * l + 1]), kv_f16,
                 att);
    proj(row + NC_O, M, att, NC_PTR(const float*, row[NC_ATTN_SUB_NORM]), eps, 0, Q, o, ks);
    if (n == 1) hf = X;  /* one stream: x += a in place */
    for (int64_t i = 0; i < MD; i++) hf[i] = in[i] + o[i];
    proj(row + NC_GATE_UP, M, hf, NC_PTR(const float*, row[NC_FFN_NORM]), eps, 0, Q, gu, ks);
    proj(row + NC_DOWN, M, gu, NC_PTR(const float*, row[NC_FFN_SUB_NORM]), eps, 1, Q, d, ks);
    if (n == 1) {  /* x += f */
      for (int64_t i = 0; i < MD; i++) X[i] += d[i];
      continue;
    }
    for (int64_t i = 0; i < MD; i++) d[i] = o[i] + d[i];  /* a + f */
    for (int m = 0; m < M; m++) {
      float* xm = X + (int64_t)m * n * D;
      for (int k = 0; k < n; k++) {
        float* out = nx + (int64_t)k * D;
        mix_row(n, D, res + k * n, xm, out);
        for (int64_t i = 0; i < D; i++) out[i] += post[k] * d[(int64_t)m * D + i];
      }
      for (int64_t i = 0; i < n * D; i++) xm[i] = nx[i];
    }
  }
}
