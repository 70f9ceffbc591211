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
   transposed slot is written (read) in runs of MT values. */
#define MT 16
#define NT 64

/* a tile of values [rows][NT] to the slot, at rows r0.., columns c0.. */
static void slot_store(void* slot, int R, int C, int tr, int bf16, int r0, int rows, int c0, int cols, float t[MT][NT]) {
  if (!tr) {
    for (int i = 0; i < rows; i++) {
      int64_t at = (int64_t)(r0 + i) * C + c0;
      if (bf16) {
        uint16_t* o = (uint16_t*)slot + at;
        for (int j = 0; j < cols; j++) o[j] = nc_to_bf16(t[i][j]);
      } else {
        memcpy((float*)slot + at, t[i], sizeof(float) * cols);
      }
    }
    return;
  }
  float u[NT][MT];  /* the tile transposed, so each column of it is stored as one run */
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < cols; j++) u[j][i] = t[i][j];
  for (int j = 0; j < cols; j++) {
    int64_t at = (int64_t)(c0 + j) * R + r0;
    if (bf16) {
      uint16_t* o = (uint16_t*)slot + at;
      for (int i = 0; i < rows; i++) o[i] = nc_to_bf16(u[j][i]);
    } else {
      memcpy((float*)slot + at, u[j], sizeof(float) * rows);
    }
  }
}

/* buf <- lerp(buf, g, w_buf); slot <- lerp(g, buf, w_nest) (Nesterov) or buf */
void nc_muon_pre(int R, int C, const float* g, float* buf, float w_buf, float w_nest, int nesterov, int tr, int bf16,
                 void* slot) {
  #pragma omp parallel if ((int64_t)R * C > NC_ROWWISE_PARALLEL)
  {
    int n0, n1;
    nc_row_block(R, &n0, &n1);
    float t[MT][NT];
    for (int r0 = n0; r0 < n1; r0 += MT) {
      int rows = n1 - r0 < MT ? n1 - r0 : MT;
      for (int c0 = 0; c0 < C; c0 += NT) {
        int cols = C - c0 < NT ? C - c0 : NT;
        for (int i = 0; i < rows; i++) {
          const float* gr = g + (int64_t)(r0 + i) * C + c0;
          float* br = buf + (int64_t)(r0 + i) * C + c0;
          for (int j = 0; j < cols; j++) br[j] = nc_lerp(br[j], gr[j], w_buf);
          if (nesterov)
            for (int j = 0; j < cols; j++) t[i][j] = nc_lerp(gr[j], br[j], w_nest);
          else
            for (int j = 0; j < cols; j++) t[i][j] = br[j];
        }
        slot_store(slot, R, C, tr, bf16, r0, rows, c0, cols, t);
      }
    }
  }
}

/* the slot's values at rows r0.., columns c0.. as a float tile [rows][NT] */
static void slot_load(const void* slot, int R, int C, int tr, int bf16, int r0, int rows, int c0, int cols, float t[MT][NT]) {
  if (!tr) {
    for (int i = 0; i < rows; i++) {
      int64_t at = (int64_t)(r0 + i) * C + c0;
      if (bf16) {
        const uint16_t* o = (const uint16_t*)slot + at;
        for (int j = 0; j < cols; j++) t[i][j] = nc_from_bf16(o[j]);
      } else {
        memcpy(t[i], (const float*)slot + at, sizeof(float) * cols);
      }
    }
    return;
  }
  float u[NT][MT];
  for (int j = 0; j < cols; j++) {
    int64_t at = (int64_t)(c0 + j) * R + r0;
    if (bf16) {
      const uint16_t* o = (const uint16_t*)slot + at;
      for (int i = 0; i < rows; i++) u[j][i] = nc_from_bf16(o[i]);
    } else {
      memcpy(u[j], (const float*)slot + at, sizeof(float) * rows);
    }
  }
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < cols; j++) t[i][j] = u[j][i];
}

/* p <- p * decay (when decay != 1) + alpha * o, o the parameter's slot of the orthogonalised stack */
void nc_muon_post(int R, int C, float* p, const void* slot, int tr, int bf16, float decay, float alpha) {
  #pragma omp parallel if ((int64_t)R * C > NC_ROWWISE_PARALLEL)
  {
    int n0, n1;
    nc_row_block(R, &n0, &n1);
    float t[MT][NT];
    for (int r0 = n0; r0 < n1; r0 += MT) {
      int rows = n1 - r0 < MT ? n1 - r0 : MT;
      for (int c0 = 0; c0 < C; c0 += NT) {
        int cols = C - c0 < NT ? C - c0 : NT;
        slot_load(slot, R, C, tr, bf16, r0, rows, c0, cols, t);
        for (int i = 0; i < rows; i++) {
          float* pr = p + (int64_t)(r0 + i) * C + c0;
          if (decay != 1.0f)
            for (int j = 0; j < cols; j++) pr[j] = __builtin_fmaf(alpha, t[i][j], pr[j] * decay);
          else
            for (int j = 0; j < cols; j++) pr[j] = __builtin_fmaf(alpha, t[i][j], pr[j]);
        }
      }
    }
  }
}
