/* Shared by the weight-only kernels: per-group sums of the activations, the term that carries
 * each group's zero point (sum_k x * (q - z) = sum_k x * q - z * sum_k x). */
#ifndef LLMQUANT_GROUP_SUMS_H
#define LLMQUANT_GROUP_SUMS_H
#include <stdint.h>
#include <stdlib.h>

/* xs[m, g] = sum_{k in group g} x[m, k] for x [M, K]; a malloc'd [M, K / group] array (NULL when
 * out of memory), freed by the caller. */
static float *group_sums(const float *x, int64_t M, int64_t K, int64_t group)
{
    const int64_t G = K / group;
    float *xs = (float *)malloc(sizeof(float) * (size_t)(M * G));
    if (!xs) return NULL;
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < G; g++) {
            float t = 0.f;
            for (int64_t k = 0; k < group; k++) t += x[m * K + g * group + k];
            xs[m * G + g] = t;
        }
    return xs;
}
#endif
