/* Muon's per-parameter passes around Newton-Schulz, for a CPU training step (train/muon.py calls
 * them). Before and after each stack's orthogonalisation, PyTorch ran three ops per parameter
 * (momentum lerp_, Nesterov lerp, the copy into the stack) and two (the decay mul_, the update
 * add_, whose bf16 operand read transposed took 96 us for 512 x 256); here each is one pass.
 *
 *   nc_muon_pre   buf <- lerp(buf, g, 1 - beta); the stack slot <- lerp(g, buf, beta) or buf
 *   nc_muon_post  p <- p * decay + alpha * (the slot of the orthogonalised stack)
 *
 * The arithmetic is PyTorch's own, so the step's bits are unchanged (tests): lerp(a, b, w) as its
 * vector kernel computes it, fma(w, b - a, a) for |w| < 0.5 and fma(w - 1, b - a, b) above; the
 * update fma(alpha, o, p * decay) as its add with alpha; float to bf16 with round-to-nearest-even
 * (NaN stays NaN). The slot is [R, C] for a parameter [R, C], or [C, R] for a tall one (tr: Newton-
 * Schulz works on wide matrices), and holds float32 or bf16 bits (bf16).
 */
#include <string.h>

#include "nc_common.h"

AI float nc_lerp(float a, float b, float w) {
  float d = b - a;
  return fabsf(w) < 0.5f ? __builtin_fmaf(w, d, a) : __builtin_fmaf(w - 1.0f, d, b);
}

AI uint16_t nc_to_bf16(float x) {
  uint32_t u;
  __builtin_memcpy(&u, &x, sizeof u);
  uint16_t r = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return x != x ? 0x7FC0 : r;
}

AI float nc_from_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float x;
  __builtin_memcpy(&x, &u, sizeof x);
  return x;
}

/* Both passes go by tiles of MT rows x NT columns, so that each row's arithmetic vectorises and a
   transposed slot is read or written in runs of MT values. */
#define MT 16
#define NT 64

/* Moves a tile between t [rows][NT] (float) and the slot at rows r0.., columns c0..: into the slot
   (store), or out of it. */
static void slot_move(int store, void* slot, int R, int C, int tr, int bf16, int r0, int rows, int c0, int cols,
                      float t[MT][NT]) {
  if (!tr) {
    for (int i = 0; i < rows; i++) {
      int64_t at = (int64_t)(r0 + i) * C + c0;
      uint16_t* h = (uint16_t*)slot + at;
      float* f = (float*)slot + at;
      if (bf16 && store)
        for (int j = 0; j < cols; j++) h[j] = nc_to_bf16(t[i][j]);
      else if (bf16)
        for (int j = 0; j < cols; j++) t[i][j] = nc_from_bf16(h[j]);
      else if (store)
        memcpy(f, t[i], sizeof(float) * cols);
      else
        memcpy(t[i], f, sizeof(float) * cols);
    }
    return;
  }
  float u[NT][MT];  /* the tile transposed: each of its rows is one run of a column of the slot */
  if (store)
    for (int i = 0; i < rows; i++)
      for (int j = 0; j < cols; j++) u[j][i] = t[i][j];
  for (int j = 0; j < cols; j++) {
    int64_t at = (int64_t)(c0 + j) * R + r0;
    uint16_t* h = (uint16_t*)slot + at;
    float* f = (float*)slot + at;
    if (bf16 && store)
      for (int i = 0; i < rows; i++) h[i] = nc_to_bf16(u[j][i]);
    else if (bf16)
      for (int i = 0; i < rows; i++) u[j][i] = nc_from_bf16(h[i]);
    else if (store)
      memcpy(f, u[j], sizeof(float) * rows);
    else
      memcpy(u[j], f, sizeof(float) * rows);
  }
  if (!store)
    for (int i = 0; i < rows; i++)
      for (int j = 0; j < cols; j++) t[i][j] = u[j][i];
}

/* One pass over a parameter [R, C] by tiles: before Newton-Schulz (post = 0: the momentum into
   buf and the update into the slot) or after it (post = 1: the slot's update into p). */
static void muon_pass(int post, int R, int C, const float* g, float* buf, float w_buf, float w_nest, int nesterov,
                      float* p, float decay, float alpha, int tr, int bf16, void* slot) {
  #pragma omp parallel if ((int64_t)R * C > NC_ROWWISE_PARALLEL)
  {
    int n0, n1;
    nc_row_block(R, &n0, &n1);
    float t[MT][NT];
    for (int r0 = n0; r0 < n1; r0 += MT) {
      int rows = n1 - r0 < MT ? n1 - r0 : MT;
      for (int c0 = 0; c0 < C; c0 += NT) {
        int cols = C - c0 < NT ? C - c0 : NT;
        if (post) slot_move(0, slot, R, C, tr, bf16, r0, rows, c0, cols, t);
        for (int i = 0; i < rows; i++) {
          int64_t at = (int64_t)(r0 + i) * C + c0;
          if (post) {
            float* pr = p + at;
            if (decay != 1.0f)
              for (int j = 0; j < cols; j++) pr[j] = __builtin_fmaf(alpha, t[i][j], pr[j] * decay);
            else
              for (int j = 0; j < cols; j++) pr[j] = __builtin_fmaf(alpha, t[i][j], pr[j]);
            continue;
          }
          const float* gr = g + at;
          float* br = buf + at;
          for (int j = 0; j < cols; j++) br[j] = nc_lerp(br[j], gr[j], w_buf);
          if (nesterov)
            for (int j = 0; j < cols; j++) t[i][j] = nc_lerp(gr[j], br[j], w_nest);
          else
            for (int j = 0; j < cols; j++) t[i][j] = br[j];
        }
        if (!post) slot_move(1, slot, R, C, tr, bf16, r0, rows, c0, cols, t);
      }
    }
  }
}

/* buf <- lerp(buf, g, w_buf); slot <- lerp(g, buf, w_nest) (Nesterov) or buf */
void nc_muon_pre(int R, int C, const float* g, float* buf, float w_buf, float w_nest, int nesterov, int tr, int bf16,
                 void* slot) {
  muon_pass(0, R, C, g, buf, w_buf, w_nest, nesterov, NULL, 1.0f, 0.0f, tr, bf16, slot);
}

/* p <- p * decay (when decay != 1) + alpha * o, o the parameter's slot of the orthogonalised stack */
void nc_muon_post(int R, int C, float* p, const void* slot, int tr, int bf16, float decay, float alpha) {
  muon_pass(1, R, C, NULL, NULL, 0.0f, 0.0f, 0, p, decay, alpha, tr, bf16, (void*)slot);
}
