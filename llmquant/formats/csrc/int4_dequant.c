/* Columns of Wᵀ from torch's CPU int4 packed layout, as fp32 (the dense path for long inputs).
 *
 * blocks points at row block b0 of the packed bytes [N/B, K, B/2] (int4_layout.py): for each row
 * block and input column k, B/2 bytes whose nibbles hold the block's B rows, split (byte j: rows
 * j and j + B/2) or adjacent (byte j: rows 2j and 2j + 1). For nb blocks from there,
 *   out[k, c] = (q[c, k] - zp[k / group, c]) * s[k / group, c],   c < nb * B,
 * with s and zp (zero + shift) fp32 [K / group, nb * B], as dequant_int4_columns computes. */
#include <stdint.h>

int llmquant_int4_dequant_cols(const uint8_t *restrict blocks, int64_t K, int64_t nb, int64_t B, int split,
                               const float *restrict s, const float *restrict zp, int64_t group,
                               float *restrict out)
{
    if (B <= 0 || B % 2 || group <= 0 || K % group || nb < 0) return 1;
    const int64_t half = B / 2, cols = nb * B;
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < K; k++) {
        const float *restrict sk = s + (k / group) * cols;
        const float *restrict zk = zp + (k / group) * cols;
        float *restrict ok = out + k * cols;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *restrict p = blocks + (b * K + k) * half;
            const float *restrict sb = sk + b * B, *restrict zb = zk + b * B;
            float *restrict ob = ok + b * B;
            if (split) {  /* two contiguous runs: the vectoriser's favourite shape */
                for (int64_t j = 0; j < half; j++) ob[j] = ((float)(p[j] & 0xF) - zb[j]) * sb[j];
                for (int64_t j = 0; j < half; j++) ob[half + j] = ((float)(p[j] >> 4) - zb[half + j]) * sb[half + j];
            } else {
                for (int64_t j = 0; j < half; j++) {
                    ob[2 * j] = ((float)(p[j] & 0xF) - zb[2 * j]) * sb[2 * j];
                    ob[2 * j + 1] = ((float)(p[j] >> 4) - zb[2 * j + 1]) * sb[2 * j + 1];
                }
            }
        }
    }
    return 0;
}
