/* Dropout noise drawn from a PyTorch CPU generator's Mersenne Twister, as bernoulli_ draws it.
 *
 * torch's CPU `bernoulli_(keep)` takes, per element, two 32-bit MT19937 outputs a and b, forms
 * the double u = ((a << 32 | b) & (2^53 - 1)) * 2^-53 and keeps the element when u < keep.
 * Here the same outputs are compared as integers (u < keep exactly when the 53-bit integer is
 * below ceil(keep * 2^53)), a whole state's worth at a time in a loop the compiler vectorizes.
 * The state is advanced exactly as torch advances it, so the caller can hand it back.
 */
#include <stdint.h>

#define N 624
#define M 397

/* AVX2 clones where the compiler can make them: one binary, the right loop picked at load. */
#if defined(__x86_64__) && defined(__GNUC__)
#define VECTORIZED __attribute__((target_clones("avx2", "default")))
#else
#define VECTORIZED
#endif

#define TWIST(u, v, m) ((m) ^ ((((u) & 0x80000000u) | ((v) & 0x7fffffffu)) >> 1) \
                        ^ ((uint32_t)-(int32_t)((v) & 1u) & 0x9908b0dfu))

/* The next 624 words of the state, in place (the standard MT19937 recurrence). */
VECTORIZED static void twist(uint32_t *mt) {
    int i;
    for (i = 0; i < N - M; i++) mt[i] = TWIST(mt[i], mt[i + 1], mt[i + M]);
    for (; i < N - 1; i++) mt[i] = TWIST(mt[i], mt[i + 1], mt[i + M - N]);
    mt[N - 1] = TWIST(mt[N - 1], mt[0], mt[M - 1]);
}

static inline uint32_t temper(uint32_t y) {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
}

/* out[i] = scale where the pair (w[2i], w[2i+1]) keeps element i, else 0. */
VECTORIZED static void noise(const uint32_t *w, int64_t pairs, uint64_t below, float scale,
                             float *out) {
    for (int64_t i = 0; i < pairs; i++) {
        uint64_t m = ((uint64_t)temper(w[2 * i]) << 32 | temper(w[2 * i + 1]))
                     & ((1ull << 53) - 1);
        out[i] = m < below ? scale : 0.0f;
    }
}

/* Fills out[0..n) and advances the generator past the 2n words it used.
 * words: the generator's 624 state words, held as 64-bit integers as torch's saved state
 * holds them; *next: the index of the next word to read, 624 when the state must twist first.
 */
void dropout_noise(uint64_t *words, int64_t *next, int64_t n, uint64_t below, float scale,
                   float *out) {
    uint32_t mt[N];
    int64_t k = *next, i = 0;
    for (int j = 0; j < N; j++) mt[j] = (uint32_t)words[j];
    while (i < n) {
        if (k >= N) { twist(mt); k = 0; }
        if (N - k >= 2) { /* whole pairs up to the end of this state */
            int64_t pairs = (N - k) / 2;
            if (pairs > n - i) pairs = n - i;
            noise(mt + k, pairs, below, scale, out + i);
            i += pairs;
            k += 2 * pairs;
        } else { /* the pair that starts on the state's last word ends in the next state */
            uint32_t pair[2];
            pair[0] = mt[k++];
            if (k >= N) { twist(mt); k = 0; }
            pair[1] = mt[k++];
            noise(pair, 1, below, scale, out + i);
            i += 1;
        }
    }
    for (int j = 0; j < N; j++) words[j] = mt[j];
    *next = k;
}
