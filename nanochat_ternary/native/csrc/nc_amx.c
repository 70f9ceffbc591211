/* Ternary x int8 products on AMX tiles (Intel AMX-INT8, Xeon Sapphire Rapids and later), for
 * prefill and batched decode (nc_ternary.c calls it from 4 tokens up; one to three tokens stay
 * on the vpdpbusd paths).
 *
 * Why: one tdpbusd multiplies a 16 x 64 u8 tile by a 64 x 16 s8 tile into 16 x 16 int32 sums,
 * 16,384 multiply-adds, where a vpdpbusd does 64. The vpdpbusd tiles of nc_ternary.c run at about
 * two products per cycle, so at 8 tokens their multiply-adds, not the weights' bytes, bound a
 * batched decode step. On tiles the cost that remains is unpacking the 2-bit weights into bytes
 * once per 16 rows x 256 columns, shared by up to 64 tokens.
 *
 * The tiles (Intel SDM vol. 1, ch. 18; the intrinsics guide's _tile_dpbusd):
 * - A = 16 weight rows x 64 columns, one row per tile row: a weight block's 2-bit plane s, shifted
 *   and masked, is exactly 64 consecutive columns (the layout of nc_ternary.c), so the packed
 *   weights are used as they are;
 * - B = the activations in the "VNNI" layout the instruction wants, tile row i holding, for each
 *   of 16 tokens, the four bytes of columns 4i..4i+3 (build_tiles: a 16 x 16 transpose of 4-byte
 *   words per 16 tokens x 64 columns; tokens past M are zeros);
 * - C[r][t] = sum over 64 columns of (w + 1) x (token t's int8): the integer sums of the other
 *   paths, so the result is theirs exactly, bit for bit after the same float epilogue.
 * Four C tiles hold 64 tokens; more tokens take another pass over the weights. Each 16 rows' sums
 * are transposed in registers so that the epilogue and the stores run 16 rows a vector.
 *
 * Linux hands out AMX state only to a process that asks (arch_prctl ARCH_REQ_XCOMP_PERM):
 * nc_cpu_features asks, and reports AMX only when granted; this library asks again before its
 * first tile instruction, in case it was loaded without that check, and leaves the work to the
 * vpdpbusd paths when refused.
 */
#include "nc_common.h"

#if defined(NC_AMX)
#include <string.h>
#include <stdlib.h>

typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} nc_tilecfg;

enum { AMX_TILES_C = 4 };  /* accumulator tiles: 64 tokens per pass over a row group */

/* v[r][t] -> v[t][r] for 16 x 16 int32: unpack 32- then 64-bit pairs within 128-bit lanes, then
   gather the lanes (64 shuffles) */
static inline __attribute__((always_inline)) void transpose16(__m512i* v) {
  __m512i t[16], x[2], y[2];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  /* lane L of v[i + p]: rows i .. i + 3 of column 4 L + p */
    v[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    v[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    v[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    v[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int p = 0; p < 4; p++) {  /* column 4 L + p: lane L of v[p], v[4 + p], v[8 + p], v[12 + p] */
    x[0] = _mm512_shuffle_i32x4(v[p], v[4 + p], 0x88);  /* lanes 0, 2 of each */
    x[1] = _mm512_shuffle_i32x4(v[p], v[4 + p], 0xdd);  /* lanes 1, 3 */
    y[0] = _mm512_shuffle_i32x4(v[8 + p], v[12 + p], 0x88);
    y[1] = _mm512_shuffle_i32x4(v[8 + p], v[12 + p], 0xdd);
    t[p] = _mm512_shuffle_i32x4(x[0], y[0], 0x88);
    t[4 + p] = _mm512_shuffle_i32x4(x[1], y[1], 0x88);
    t[8 + p] = _mm512_shuffle_i32x4(x[0], y[0], 0xdd);
    t[12 + p] = _mm512_shuffle_i32x4(x[1], y[1], 0xdd);
  }
  for (int i = 0; i < 16; i++) v[i] = t[i];
}

/* xb[j][c] (1 KB each): the B tile of tokens m0 + 16 j .. + 15 (j < nj) and columns 64 c .. 64 c + 63:
   row i, bytes 4 t .. 4 t + 3 = token t's columns 64 c + 4 i .. + 3 (zeros past M), that is the
   16 tokens' 64 bytes as a 16 x 16 matrix of 4-byte words, transposed */
static void build_tiles(int M, int K, const int8_t* xq, int m0, int nj, int8_t* xb) {
  int KC = K / 64;
  for (int j = 0; j < nj; j++)
    for (int c = 0; c < KC; c++) {
      __m512i v[16];
      for (int t = 0; t < 16; t++) {
        int m = m0 + j * 16 + t;
        v[t] = m < M ? _mm512_loadu_si512(xq + (int64_t)m * K + 64 * c) : _mm512_setzero_si512();
      }
      transpose16(v);
      int8_t* img = xb + ((int64_t)j * KC + c) * 1024;
      for (int i = 0; i < 16; i++) _mm512_store_si512(img + 64 * i, v[i]);
    }
}

/* this thread's buffer of at least `bytes` (64-aligned, kept for the next call; NULL when out of
   memory). Per thread: a tile loaded by another core than the one that wrote it cost about 6 us
   a call at 8 tokens (measured), more than building the tiles twice. */
static int8_t* thread_buffer(int64_t bytes) {
  static __thread int8_t* buf;
  static __thread int64_t size;
  if (size < bytes) {
    free(buf);
    size = (bytes + 4095) / 4096 * 4096;
    buf = (int8_t*)aligned_alloc(64, (size_t)size);
    if (!buf) size = 0;
  }
  return buf;
}

/* the A tiles of one weight block: rows n .. n + nr - 1 (zeros past nr), plane s to a[s] */
static inline __attribute__((always_inline)) void unpack_block(const uint8_t* w, int64_t KB, int n, int nr, int b, uint8_t (*a)[1024]) {
  const __m512i mask = _mm512_set1_epi8(3);
  for (int r = 0; r < 16; r++) {
    __m512i v = r < nr ? _mm512_loadu_si512(w + (int64_t)(n + r) * KB + b * 64) : _mm512_setzero_si512();
    for (int s = 0; s < 4; s++) _mm512_store_si512(a[s] + 64 * r, _mm512_and_si512(_mm512_srli_epi16(v, 2 * s), mask));
  }
}

/* weight rows [n0, n1) x tokens [0, M): out[m, n] = sum over groups g of sw[n, g] * (C - xsum[m, g]),
   divided by xs[m] (the float operations and order of nc_ternary.c's epilogue) */
int nc_amx_range(int M, int N, int K, const int8_t* xq, const uint8_t* w, const float* sw, int G,
                 const float* xs, const int32_t* xsum, float* out, int n0, int n1) {
  static int permitted = -1;  /* a benign race: every thread that sees -1 asks */
  if (permitted < 0) permitted = nc_amx_permit();
  if (!permitted) return 0;  /* refused: the vpdpbusd paths */
  int MC = (M + 15) / 16;
  int8_t* xb = thread_buffer((int64_t)(MC < AMX_TILES_C ? MC : AMX_TILES_C) * K * 16);
  if (!xb) return 0;
  nc_tilecfg cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
  _tile_loadconfig(&cfg);  /* per thread, and per call: other code (oneDNN) may reconfigure */
  int64_t KB = K / 4, step = (int64_t)(K / 64) * 1024;  /* step: to the next 16 tokens' tiles */
  int nb = K / 256 / G;
  /* two blocks' A tiles: block b + 1 is unpacked while block b's tiles compute, so a tile load
     never waits for the stores just made */
  uint8_t a[2][4][1024] __attribute__((aligned(64)));
  int32_t c[16][16] __attribute__((aligned(64)));
  __m512 res[AMX_TILES_C][16];  /* [16-token tile][token]: 16 rows' sums */
  const __m512i gidx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(G));
  for (int mc0 = 0; mc0 < MC; mc0 += AMX_TILES_C) {  /* a pass of up to 64 tokens over the rows */
    int nmc = MC - mc0 < AMX_TILES_C ? MC - mc0 : AMX_TILES_C;
    build_tiles(M, K, xq, mc0 * 16, nmc, xb);
    for (int n = n0; n < n1; n += 16) {
      int nr = n1 - n < 16 ? n1 - n : 16;
      __mmask16 rows = (__mmask16)((1u << nr) - 1);
      for (int j = 0; j < nmc; j++)
        for (int t = 0; t < 16; t++) res[j][t] = _mm512_setzero_ps();
      for (int g = 0; g < G; g++) {
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        unpack_block(w, KB, n, nr, g * nb, a[0]);
        for (int b = g * nb; b < (g + 1) * nb; b++) {
          if (b + 1 < (g + 1) * nb) unpack_block(w, KB, n, nr, b + 1, a[(b + 1 - g * nb) & 1]);
          uint8_t (*ab)[1024] = a[(b - g * nb) & 1];
          const int8_t* x = xb + (int64_t)(4 * b) * 1024;  /* plane s: + 1024 s */
          for (int s = 0; s < 4; s++) {  /* a C tile per 16 tokens (more chains per token tile ran no faster) */
            _tile_loadd(4, ab[s], 64);
            _tile_loadd(5, x + 1024 * s, 64);
            _tile_dpbusd(0, 4, 5);
            if (nmc > 1) { _tile_loadd(6, x + 1024 * s + step, 64); _tile_dpbusd(1, 4, 6); }
            if (nmc > 2) { _tile_loadd(7, x + 1024 * s + 2 * step, 64); _tile_dpbusd(2, 4, 7); }
            if (nmc > 3) { _tile_loadd(5, x + 1024 * s + 3 * step, 64); _tile_dpbusd(3, 4, 5); }
          }
        }
        /* this group's scales of the 16 rows (zeros past nr) */
        __m512 swv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), rows, gidx, sw + (int64_t)n * G + g, 4);
        for (int j = 0; j < nmc; j++) {
          switch (j) {  /* tile numbers are immediates */
            case 0: _tile_stored(0, c, 64); break;
            case 1: _tile_stored(1, c, 64); break;
            case 2: _tile_stored(2, c, 64); break;
            default: _tile_stored(3, c, 64); break;
          }
          __m512i v[16];
          for (int r = 0; r < 16; r++) v[r] = _mm512_load_si512(c[r]);
          transpose16(v);  /* v[t]: token t's sums for the 16 rows */
          for (int t = 0; t < 16; t++) {
            int m = (mc0 + j) * 16 + t;
            if (m >= M) break;
            __m512 d = _mm512_cvtepi32_ps(_mm512_sub_epi32(v[t], _mm512_set1_epi32(xsum[m * G + g])));
            res[j][t] = _mm512_add_ps(res[j][t], _mm512_mul_ps(swv, d));
          }
        }
      }
      for (int j = 0; j < nmc; j++)
        for (int t = 0; t < 16; t++) {
          int m = (mc0 + j) * 16 + t;
          if (m >= M) break;
          _mm512_mask_storeu_ps(out + (int64_t)m * N + n, rows, _mm512_div_ps(res[j][t], _mm512_set1_ps(xs[m])));
        }
    }
  }
  _tile_release();
  return 1;
}
#endif
