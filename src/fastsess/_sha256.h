/* SHA-256 and HMAC-SHA256 on the x86 SHA extensions, for the C kernel (_core.pyx).
 *
 * Only the SHA-extension path lives here: a CPU without them (or a compiler or
 * architecture that cannot target them) keeps the kernel's OpenSSL path, which
 * is faster than any portable C rounds would be. The kernel asks
 * fs_sha_ni_available() once, at import, and calls the rest only when it said 1.
 *
 * The state is the FIPS 180-4 one, H0..H7 as eight host-order words; an HMAC key
 * is the pair of states after one compression of key XOR ipad and key XOR opad
 * (RFC 2104), so a tag copies the pair and compresses only the message blocks
 * and one outer block.
 */

#ifndef FASTSESS_SHA256_H
#define FASTSESS_SHA256_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint32_t inner[8];
    uint32_t outer[8];
} fs_hmac_key;

/* GCC 5 and clang 3.8 know the "sha" target and its intrinsics outside -msha. */
#if (defined(__x86_64__) || defined(__i386__)) && !defined(_MSC_VER) \
    && ((defined(__clang__) && (__clang_major__ > 3 || (__clang_major__ == 3 && __clang_minor__ >= 8))) \
        || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 5))
#define FS_SHA_NI_COMPILED 1
#else
#define FS_SHA_NI_COMPILED 0
#endif

/* Overwrite a secret so that the compiler cannot drop the stores as dead: an
 * empty asm that may read the memory, or, where there is no GNU asm, byte
 * stores through a volatile pointer. */
static void fs_wipe(void *p, size_t n)
{
#if defined(__GNUC__) || defined(__clang__)
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
#else
    volatile uint8_t *v = (volatile uint8_t *)p;
    while (n--) {
        *v++ = 0;
    }
#endif
}

static const uint32_t fs_sha256_iv[8] = {
    0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
    0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u,
};

static void fs_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

#if FS_SHA_NI_COMPILED

#include <cpuid.h>
#include <immintrin.h>

/* 1 if this CPU has the SHA extensions and the SSSE3 and SSE4.1 shuffles they are used with. */
static int fs_sha_ni_available(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (__get_cpuid_max(0, NULL) < 7) {
        return 0;
    }
    __cpuid(1, eax, ebx, ecx, edx);
    if (!(ecx & (1u << 9)) || !(ecx & (1u << 19))) { /* SSSE3, SSE4.1 */
        return 0;
    }
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    return (ebx >> 29) & 1; /* SHA */
}

static const uint32_t fs_sha256_k[64] __attribute__((aligned(16))) = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

/* Four rounds: SHA256RNDS2 takes the working variables as the pairs (A, B, E, F)
 * and (C, D, G, H), each with A or C in the top lane, and W + K for two rounds in
 * its low half; it returns the new (A, B, E, F), whose old value is the new
 * (C, D, G, H). w holds W[4g .. 4g+3]. */
#define FS_ROUNDS4(g, w)                                                                 \
    do {                                                                                 \
        __m128i wk_ = _mm_add_epi32((w), _mm_load_si128((const __m128i *)&fs_sha256_k[4 * (g)])); \
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk_);                                   \
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk_, 0x0E));          \
    } while (0)

/* The next four schedule words into w0, which held the oldest four: for each i,
 * W[i] = W[i-16] + s0(W[i-15]) + W[i-7] + s1(W[i-2]). MSG1 adds the s0 terms, the
 * byte shift brings W[i-7], MSG2 adds the s1 terms (of words it makes itself for
 * the upper two). */
#define FS_SCHEDULE(w0, w1, w2, w3) \
    w0 = _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8(w3, w2, 4)), w3)

/* Compress n 64-byte blocks into state. */
__attribute__((target("sha,sse4.1,ssse3")))
static void fs_sha256_blocks(uint32_t state[8], const uint8_t *p, size_t n)
{
    /* Reverses the bytes of each 32-bit lane: the message words are big-endian. */
    const __m128i be = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i abef, cdgh, t, w0, w1, w2, w3, abef_in, cdgh_in;

    /* Lanes, low to high: state words 0-3 are (A B C D), 4-7 (E F G H). */
    t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[0]), 0xB1); /* B A D C */
    cdgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[4]), 0x1B); /* H G F E */
    abef = _mm_alignr_epi8(t, cdgh, 8); /* F E B A */
    cdgh = _mm_blend_epi16(cdgh, t, 0xF0); /* H G D C */

    for (; n; n--, p += 64) {
        abef_in = abef;
        cdgh_in = cdgh;
        w0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 0)), be);
        FS_ROUNDS4(0, w0);
        w1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), be);
        FS_ROUNDS4(1, w1);
        w2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), be);
        FS_ROUNDS4(2, w2);
        w3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), be);
        FS_ROUNDS4(3, w3);
        FS_SCHEDULE(w0, w1, w2, w3); FS_ROUNDS4(4, w0);
        FS_SCHEDULE(w1, w2, w3, w0); FS_ROUNDS4(5, w1);
        FS_SCHEDULE(w2, w3, w0, w1); FS_ROUNDS4(6, w2);
        FS_SCHEDULE(w3, w0, w1, w2); FS_ROUNDS4(7, w3);
        FS_SCHEDULE(w0, w1, w2, w3); FS_ROUNDS4(8, w0);
        FS_SCHEDULE(w1, w2, w3, w0); FS_ROUNDS4(9, w1);
        FS_SCHEDULE(w2, w3, w0, w1); FS_ROUNDS4(10, w2);
        FS_SCHEDULE(w3, w0, w1, w2); FS_ROUNDS4(11, w3);
        FS_SCHEDULE(w0, w1, w2, w3); FS_ROUNDS4(12, w0);
        FS_SCHEDULE(w1, w2, w3, w0); FS_ROUNDS4(13, w1);
        FS_SCHEDULE(w2, w3, w0, w1); FS_ROUNDS4(14, w2);
        FS_SCHEDULE(w3, w0, w1, w2); FS_ROUNDS4(15, w3);
        abef = _mm_add_epi32(abef, abef_in);
        cdgh = _mm_add_epi32(cdgh, cdgh_in);
    }

    t = _mm_shuffle_epi32(abef, 0x1B); /* A B E F */
    cdgh = _mm_shuffle_epi32(cdgh, 0xB1); /* G H C D */
    _mm_storeu_si128((__m128i *)&state[0], _mm_blend_epi16(t, cdgh, 0xF0)); /* A B C D */
    _mm_storeu_si128((__m128i *)&state[4], _mm_alignr_epi8(cdgh, t, 8)); /* E F G H */
}

#undef FS_ROUNDS4
#undef FS_SCHEDULE

#else /* no SHA extensions to target: never called, since fs_sha_ni_available() says 0 */

static int fs_sha_ni_available(void)
{
    return 0;
}

static void fs_sha256_blocks(uint32_t state[8], const uint8_t *p, size_t n)
{
    (void)state;
    (void)p;
    (void)n;
}

#endif

/* Finish a hash whose state has absorbed `done` bytes (whole blocks) with the
 * last len bytes of the message: digest into out, and state left spent. */
static void fs_sha256_last(uint32_t state[8], uint64_t done, const uint8_t *msg, size_t len, uint8_t out[32])
{
    uint8_t tail[128];
    size_t whole = len / 64, rest = len % 64, padded = rest < 56 ? 64 : 128;
    uint64_t bits = (done + (uint64_t)len) * 8;
    int i;

    if (whole) {
        fs_sha256_blocks(state, msg, whole);
    }
    memcpy(tail, msg + whole * 64, rest);
    tail[rest] = 0x80;
    memset(tail + rest + 1, 0, padded - 8 - rest - 1);
    fs_put_be32(tail + padded - 8, (uint32_t)(bits >> 32));
    fs_put_be32(tail + padded - 4, (uint32_t)bits);
    fs_sha256_blocks(state, tail, padded / 64);
    fs_wipe(tail, padded);
    for (i = 0; i < 8; i++) {
        fs_put_be32(out + 4 * i, state[i]);
    }
}

/* SHA-256 of msg[0:len] into out. */
static void fs_sha256(const uint8_t *msg, size_t len, uint8_t out[32])
{
    uint32_t state[8];
    memcpy(state, fs_sha256_iv, sizeof state);
    fs_sha256_last(state, 0, msg, len, out);
    fs_wipe(state, sizeof state);
}

/* The keyed states of HMAC-SHA256 under key[0:len] (a key longer than a block is hashed first). */
static void fs_hmac_key_init(fs_hmac_key *k, const uint8_t *key, size_t len)
{
    uint8_t block[64];
    int i;

    memset(block, 0, sizeof block);
    if (len > 64) {
        fs_sha256(key, len, block);
    } else if (len) {
        memcpy(block, key, len);
    }
    for (i = 0; i < 64; i++) {
        block[i] ^= 0x36;
    }
    memcpy(k->inner, fs_sha256_iv, sizeof k->inner);
    fs_sha256_blocks(k->inner, block, 1);
    for (i = 0; i < 64; i++) {
        block[i] ^= 0x36 ^ 0x5C;
    }
    memcpy(k->outer, fs_sha256_iv, sizeof k->outer);
    fs_sha256_blocks(k->outer, block, 1);
    fs_wipe(block, sizeof block);
}

/* HMAC-SHA256(key, msg[0:len]) into out, from the keyed states of fs_hmac_key_init. */
static void fs_hmac_sha256(const fs_hmac_key *k, const uint8_t *msg, size_t len, uint8_t out[32])
{
    uint32_t state[8];
    uint8_t inner[32];

    memcpy(state, k->inner, sizeof state);
    fs_sha256_last(state, 64, msg, len, inner);
    memcpy(state, k->outer, sizeof state);
    fs_sha256_last(state, 64, inner, sizeof inner, out);
    fs_wipe(state, sizeof state);
    fs_wipe(inner, sizeof inner);
}

/* 1 if HMAC-SHA256(key, msg[0:len]) begins with tag[0:tag_len] (at most 32
 * bytes), in time independent of where they differ; the computed tag is wiped. */
static int fs_hmac_sha256_verify(const fs_hmac_key *k, const uint8_t *msg, size_t len,
                                 const uint8_t *tag, size_t tag_len)
{
    uint8_t mac[32];
    unsigned int diff = 0;
    size_t i;

    fs_hmac_sha256(k, msg, len, mac);
    for (i = 0; i < tag_len; i++) {
        diff |= (unsigned int)(mac[i] ^ tag[i]);
    }
    fs_wipe(mac, sizeof mac);
    return diff == 0;
}

#endif /* FASTSESS_SHA256_H */
