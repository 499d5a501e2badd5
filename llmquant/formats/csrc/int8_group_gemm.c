/* Grouped 8-bit weight-only matmul for a few activation rows (decode), fp32 throughout.
 *
 *   y[m, n] = sum_g s[g, n] * (sum_{k in g} x[m, k] * q[n, k])  -  sum_g s[g, n] * z[g, n] * xs[m, g]
 *
 * with xs[m, g] = sum_{k in g} x[m, k]: this is x @ Wᵀ for W[n, k] = s[g, n] * (q[n, k] - z[g, n]),
 * g = k / group. Weights are read once per call as bytes (a quarter of fp32's traffic); output
 * rows are split across torch's OpenMP threads (the libgomp torch has loaded). One vector body
 * per instruction set (AVX-512, AVX2+FMA, portable C), chosen by the flags native.py compiles
 * with for the capability torch dispatches to. group must be a multiple of 16. */
#include <stdint.h>

#include "group_sums.h"
#include <stdlib.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* out[r] = sum_g s[g, n + r] * dot(x_g, q[n + r]_g) for R rows of q at once: R independent
 * accumulator chains hide the FMA latency and each x load serves R rows. The scale is applied
 * per group to a vector accumulator, so there is one horizontal sum per row. */
#define R 4
#if defined(__AVX512F__)
static void rows_dot(const float *x, const uint8_t *q, int64_t K, const float *s, int64_t N, int64_t G,
                     int64_t group, int rows, float *out)
{
    __m512 total[R];
    for (int r = 0; r < R; r++) total[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        __m512 acc[R];
        for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
        for (int64_t k = g * group; k < (g + 1) * group; k += 16) {
            __m512 xv = _mm512_loadu_ps(x + k);
            for (int r = 0; r < rows; r++) {
                __m128i b = _mm_loadu_si128((const __m128i *)(q + r * K + k));
                acc[r] = _mm512_fmadd_ps(xv, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)), acc[r]);
            }
        }
        for (int r = 0; r < rows; r++) total[r] = _mm512_fmadd_ps(_mm512_set1_ps(s[g * N + r]), acc[r], total[r]);
    }
    for (int r = 0; r < rows; r++) out[r] = _mm512_reduce_add_ps(total[r]);
}
#elif defined(__AVX2__) && defined(__FMA__)
static float hsum256(__m256 v)
{
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}

static void rows_dot(const float *x, const uint8_t *q, int64_t K, const float *s, int64_t N, int64_t G,
                     int64_t group, int rows, float *out)
{
    __m256 total[R];
    for (int r = 0; r < R; r++) total[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        __m256 acc[R];
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
        for (int64_t k = g * group; k < (g + 1) * group; k += 16) {
            __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
            for (int r = 0; r < rows; r++) {
                __m128i b = _mm_loadu_si128((const __m128i *)(q + r * K + k));
                __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
                __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(b, b)));
                acc[r] = _mm256_fmadd_ps(x1, w1, _mm256_fmadd_ps(x0, w0, acc[r]));
            }
        }
        for (int r = 0; r < rows; r++) total[r] = _mm256_fmadd_ps(_mm256_set1_ps(s[g * N + r]), acc[r], total[r]);
    }
    for (int r = 0; r < rows; r++) out[r] = hsum256(total[r]);
}
#else
static void rows_dot(const float *x, const uint8_t *q, int64_t K, const float *s, int64_t N, int64_t G,
                     int64_t group, int rows, float *out)
{
    for (int r = 0; r < rows; r++) {
        float total = 0.f;
        for (int64_t g = 0; g < G; g++) {
            float acc[16] = {0};
            for (int64_t k = g * group; k < (g + 1) * group; k += 16)
                for (int j = 0; j < 16; j++) acc[j] += x[k + j] * (float)q[r * K + k + j];
            float d = 0.f;
            for (int j = 0; j < 16; j++) d += acc[j];
            total += s[g * N + r] * d;
        }
        out[r] = total;
    }
}
#endif

int llmquant_int8_group_gemm(const float *x, int64_t M, int64_t K, const uint8_t *q, int64_t N,
                             const float *s, const uint8_t *z, int64_t group, float *y)
{
    if (group <= 0 || group % 16 || K % group) return 1;
    const int64_t G = K / group;
    float *xs = group_sums(x, M, K, group);
    if (!xs) return 2;
    const int64_t blocks = (N + R - 1) / R;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t n = b * R;
        const int rows = (int)(N - n < R ? N - n : R);
        for (int64_t m = 0; m < M; m++) {
            float dots[R];
            rows_dot(x + m * K, q + n * K, K, s + n, N, G, group, rows, dots);
            for (int r = 0; r < rows; r++) {
                float corr = 0.f;
                for (int64_t g = 0; g < G; g++) corr += s[g * N + n + r] * (float)z[g * N + n + r] * xs[m * G + g];
                y[m * N + n + r] = dots[r] - corr;
            }
        }
    }
    free(xs);
    return 0;
}

/* Rows n0..n1 of W = s * (q - z) as fp32 [n1 - n0, K] (the dense path for long inputs: a block
 * of rows small enough to stay in cache, then one matmul). group must be a multiple of 16. */
int llmquant_int8_group_dequant(const uint8_t *restrict q, int64_t N, int64_t K, const float *restrict s,
                                const uint8_t *restrict z, int64_t group, int64_t n0, int64_t n1,
                                float *restrict out)
{
    if (group <= 0 || group % 16 || K % group || n0 < 0 || n1 > N || n0 > n1) return 1;
    const int64_t G = K / group;
#pragma omp parallel for schedule(static)
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *restrict qn = q + n * K;
        float *restrict on = out + (n - n0) * K;
        for (int64_t g = 0; g < G; g++) {
            const float sc = s[g * N + n], zf = (float)z[g * N + n];
            for (int64_t k = g * group; k < (g + 1) * group; k++) on[k] = ((float)qn[k] - zf) * sc;  /* as IntWeight */
        }
    }
    return 0;
}
