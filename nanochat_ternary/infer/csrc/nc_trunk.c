/* The whole trunk of a plain attention model (one residual stream, no DeltaNet, no MoE) in one
 * call: for every layer, x += o(attention(qkv(x))) then x += down(swiglu(gate_up(x))).
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
 * five fields each: packed weights, scales, N (outputs), K (inputs), G (scale groups). The KV
 * cache pointers come per call ([layers, 2]: keys, values), since the cache moves when it grows.
 */
#include "nc_common.h"

enum { NC_ATTN_NORM, NC_ATTN_SUB_NORM, NC_FFN_NORM, NC_FFN_SUB_NORM, NC_QKV, NC_O = NC_QKV + 5,
       NC_GATE_UP = NC_O + 5, NC_DOWN = NC_GATE_UP + 5, NC_PLAN_FIELDS = NC_DOWN + 5 };

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
   output (the o projection's input), the o output, the gate|up output, the down output, then the
   kernels' scratch; returns the bytes used. Pointers are written only when `at` is given. */
static int64_t layer_layout(int M, const int64_t* row, char* base, float** at) {
  const int regions[5][2] = {{NC_QKV, 2}, {NC_O, 3}, {NC_O, 2}, {NC_GATE_UP, 2}, {NC_DOWN, 2}};  /* (projection, N or K) */
  int64_t off = 0, kern = 0;
  for (int j = 0; j < 5; j++) {
    if (at) at[j] = (float*)(base + off);
    off += NC_ALIGN64(4 * (int64_t)M * row[regions[j][0] + regions[j][1]]);
  }
  for (int j = NC_QKV; j < NC_PLAN_FIELDS; j += 5) {
    int64_t k = proj_scratch(M, row[j + 3], row[j + 4]);
    kern = k > kern ? k : kern;
  }
  if (at) at[5] = (float*)(base + off);
  return off + kern;
}

/* the scratch nc_trunk needs for M rows (the largest layer's, plus alignment) */
int64_t nc_trunk_scratch_bytes(int M, int L, const int64_t* plan) {
  int64_t most = 0;
  for (int l = 0; l < L; l++) {
    int64_t b = layer_layout(M, plan + (int64_t)l * NC_PLAN_FIELDS, NULL, NULL);
    most = b > most ? b : most;
  }
  return most + 64;
}

/* x [M, D] (float32, updated in place): the rows' residual stream after every layer. Rows sit at
   positions pos[r] of KV-cache slots slot[r] (as nc_attention); kv [L, 2] the layers' caches of
   capacity cap; scratch as nc_trunk_scratch_bytes says. Q: the activation quantizer's max. */
void nc_trunk(int M, int L, const int64_t* plan, const int64_t* kv, int H, int KV, int hd, int cap,
              const int64_t* slot, const int64_t* pos, const float* cos_t, const float* sin_t, float eps, int Q,
              float* x, char* scratch) {
  char* base = (char*)(((uintptr_t)scratch + 63) / 64 * 64);
  for (int l = 0; l < L; l++) {
    const int64_t* row = plan + (int64_t)l * NC_PLAN_FIELDS;
    float* r[6];
    layer_layout(M, row, base, r);
    float *qkv = r[0], *att = r[1], *o = r[2], *gu = r[3], *d = r[4];
    char* ks = (char*)r[5];
    int64_t n = (int64_t)M * row[NC_O + 2];  /* M x D */
    proj(row + NC_QKV, M, x, NC_PTR(const float*, row[NC_ATTN_NORM]), eps, 0, Q, qkv, ks);
    nc_attention(M, H, KV, hd, cap, qkv, slot, pos, cos_t, sin_t, NC_PTR(float*, kv[2 * l]), NC_PTR(float*, kv[2 * l + 1]), att);
    proj(row + NC_O, M, att, NC_PTR(const float*, row[NC_ATTN_SUB_NORM]), eps, 0, Q, o, ks);
    for (int64_t i = 0; i < n; i++) x[i] += o[i];
    proj(row + NC_GATE_UP, M, x, NC_PTR(const float*, row[NC_FFN_NORM]), eps, 0, Q, gu, ks);
    proj(row + NC_DOWN, M, gu, NC_PTR(const float*, row[NC_FFN_SUB_NORM]), eps, 1, Q, d, ks);
    for (int64_t i = 0; i < n; i++) x[i] += d[i];
  }
}
