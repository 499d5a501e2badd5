/* 4-bit weight-only matmul for a few activation rows (decode), fp32 math, reading torch's CPU
 * int4 packed layout in place (int4_layout.py): packed [N/B, K, B/2] bytes; byte j of row block
 * b at column k holds rows j and j + B/2 (split) or 2j and 2j + 1 (adjacent), low nibble first.
 *
 *   y[m, n] = sum_g s[g, n] * (sum_{k in g} x[m, k] * q[n, k]  -  zp[g, n] * xs[m, g])
 *
 * with zp the zero point plus the stored shift and xs the per-group sums of x. For each column k
 * the B/2 bytes of a block give B rows' integers; the accumulators run across rows (vectors over
 * n), so each byte is read once per activation row. Scales may be fp16 or fp32, zero points
 * uint8 or fp32 (flags), as QuantLinear keeps them. Split layouts with B = 32 (AVX2) or 64
 * (AVX-512) have vector bodies; anything else runs the portable loop. */
#include <stdint.h>

#include "group_sums.h"
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else {  /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7F800000 | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void load_params(const void *s, int s_half, const void *z, int z_u8, int64_t off, int64_t B,
                        float shift, float *sf, float *zf)
{
    for (int64_t j = 0; j < B; j++) {
        sf[j] = s_half ? half_to_float(((const uint16_t *)s)[off + j]) : ((const float *)s)[off + j];
        zf[j] = (z_u8 ? (float)((const uint8_t *)z)[off + j] : ((const float *)z)[off + j]) + shift;
    }
}

/* one row block (B rows), one activation row: y_b[j] for j < B */
static void block_row(const float *x, const uint8_t *p, int64_t K, int64_t B, int split, int64_t group,
                      const float *xs, const void *s, int s_half, const void *z, int z_u8, float shift,
                      int64_t N, int64_t n0, float *y)
{
    const int64_t half = B / 2, G = K / group;
    float sf[256], zf[256], total[256];
    for (int64_t j = 0; j < B; j++) total[j] = 0.f;
    for (int64_t g = 0; g < G; g++) {
        float acc[256];
#if defined(__AVX512F__)
        if (split && B == 64) {
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
            const __m128i mask = _mm_set1_epi8(0x0F);
            for (int64_t k = g * group; k < (g + 1) * group; k++) {
                const __m512 xk = _mm512_set1_ps(x[k]);
                const __m128i b0 = _mm_loadu_si128((const __m128i *)(p + k * half));
                const __m128i b1 = _mm_loadu_si128((const __m128i *)(p + k * half + 16));
                a0 = _mm512_fmadd_ps(xk, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b0, mask))), a0);
                a1 = _mm512_fmadd_ps(xk, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b1, mask))), a1);
                a2 = _mm512_fmadd_ps(xk, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b0, 4), mask))), a2);
                a3 = _mm512_fmadd_ps(xk, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b1, 4), mask))), a3);
            }
            _mm512_storeu_ps(acc, a0); _mm512_storeu_ps(acc + 16, a1);
            _mm512_storeu_ps(acc + 32, a2); _mm512_storeu_ps(acc + 48, a3);
        } else
#endif
#if defined(__AVX2__) && defined(__FMA__)
        if (split && B == 32) {
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
            const __m128i mask = _mm_set1_epi8(0x0F);
            for (int64_t k = g * group; k < (g + 1) * group; k++) {
                const __m256 xk = _mm256_set1_ps(x[k]);
                const __m128i b = _mm_loadu_si128((const __m128i *)(p + k * half));
                const __m128i lo = _mm_and_si128(b, mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
                a0 = _mm256_fmadd_ps(xk, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), a0);
                a1 = _mm256_fmadd_ps(xk, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(lo, lo))), a1);
                a2 = _mm256_fmadd_ps(xk, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), a2);
                a3 = _mm256_fmadd_ps(xk, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(hi, hi))), a3);
            }
            _mm256_storeu_ps(acc, a0); _mm256_storeu_ps(acc + 8, a1);
            _mm256_storeu_ps(acc + 16, a2); _mm256_storeu_ps(acc + 24, a3);
        } else
#endif
        {
            for (int64_t j = 0; j < B; j++) acc[j] = 0.f;
            for (int64_t k = g * group; k < (g + 1) * group; k++) {
                const float xk = x[k];
                const uint8_t *pk = p + k * half;
                for (int64_t j = 0; j < half; j++) {
                    const int64_t r0 = split ? j : 2 * j, r1 = split ? j + half : 2 * j + 1;
                    acc[r0] += xk * (float)(pk[j] & 0xF);
                    acc[r1] += xk * (float)(pk[j] >> 4);
                }
            }
        }
        load_params(s, s_half, z, z_u8, g * N + n0, B, shift, sf, zf);
        for (int64_t j = 0; j < B; j++) total[j] += sf[j] * (acc[j] - zf[j] * xs[g]);
    }
    for (int64_t j = 0; j < B; j++) y[j] = total[j];
}

int llmquant_int4_gemm(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, int64_t B,
                       int split, const void *s, int s_half, const void *z, int z_u8, float shift,
                       int64_t group, float *y)
{
    if (B <= 0 || B > 256 || B % 2 || N % B || group <= 0 || K % group) return 1;
    const int64_t G = K / group, NB = N / B;
    float *xs = group_sums(x, M, K, group);
    if (!xs) return 2;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < NB; b++) {
        float yb[256];
        for (int64_t m = 0; m < M; m++) {
            block_row(x + m * K, packed + b * K * (B / 2), K, B, split, group, xs + m * G, s, s_half, z, z_u8,
                      shift, N, b * B, yb);
            memcpy(y + m * N + b * B, yb, sizeof(float) * (size_t)B);
        }
    }
    free(xs);
    return 0;
}
