/* OpenSSL's SHA-256, called directly, for the C kernel (_core.pyx).
 *
 * Nothing here hashes by itself: every compression is OpenSSL's (SHA256_Init,
 * SHA256_Update, SHA256_Final, which run on the CPU's SHA extensions where it
 * has them). What this saves is the per-call cost of going through hashlib's
 * hash objects: allocating an EVP context, copying it, freeing it, for every
 * tag of a few hundred bytes.
 *
 * The functions come from the libcrypto that CPython's _hashlib module is
 * linked with, found at run time: fs_libcrypto_load(path of _hashlib) opens
 * that module again (it is already loaded, so nothing new is loaded) and asks
 * for the symbols through its handle, which searches the module and the
 * libraries it depends on. So the build needs no OpenSSL headers or library,
 * and the kernel uses the very OpenSSL the standard library uses. Where that
 * fails (no dlopen, an OpenSSL linked statically with hidden symbols, a
 * libcrypto without the functions, a wrong answer to a known-answer check),
 * fs_libcrypto_load returns 0 and the kernel keeps to hashlib.
 *
 * An HMAC key (RFC 2104) is the pair of SHA-256 contexts after hashing
 * key XOR ipad and key XOR opad: a tag copies the pair, as OpenSSL's own
 * HMAC does, and hashes only the message and then the inner digest.
 * SHA256_CTX is a plain struct of 112 bytes in every OpenSSL since 0.9.8: it
 * is public, and applications put it on their stacks, so its size is part of
 * OpenSSL's ABI. It holds no pointers, so a copy is a memcpy. The contexts
 * here reserve 128 bytes.
 */

#ifndef FASTSESS_LIBCRYPTO_H
#define FASTSESS_LIBCRYPTO_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FS_SHA256_CTX_BYTES 128

typedef union {
    unsigned char bytes[FS_SHA256_CTX_BYTES];
    uint64_t align_; /* OpenSSL's context holds 32-bit words */
} fs_sha256_ctx;

typedef struct {
    fs_sha256_ctx inner;
    fs_sha256_ctx outer;
} fs_hmac_key;

typedef int (*fs_sha256_init_fn)(void *ctx);
typedef int (*fs_sha256_update_fn)(void *ctx, const void *data, size_t len);
typedef int (*fs_sha256_final_fn)(unsigned char *md, void *ctx);
typedef int (*fs_memcmp_fn)(const void *a, const void *b, size_t len);

static fs_sha256_init_fn fs_sha256_init_;
static fs_sha256_update_fn fs_sha256_update_;
static fs_sha256_final_fn fs_sha256_final_;
static fs_memcmp_fn fs_memcmp_; /* CRYPTO_memcmp: constant time */

/* Overwrite a secret so that the compiler cannot drop the stores as dead: an
 * empty asm that may read the memory, or, where there is no GNU asm, byte
 * stores through a volatile pointer. */
static void fs_wipe(void *p, size_t n)
{
#if defined(__GNUC__) || defined(__clang__)
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
#else
    volatile unsigned char *v = (volatile unsigned char *)p;
    while (n--) {
        *v++ = 0;
    }
#endif
}

/* SHA-256 of msg[0:len] into out. Only after fs_libcrypto_load() said 1. */
static void fs_sha256(const uint8_t *msg, size_t len, uint8_t out[32])
{
    fs_sha256_ctx ctx;
    fs_sha256_init_(&ctx);
    fs_sha256_update_(&ctx, msg, len);
    fs_sha256_final_(out, &ctx);
    fs_wipe(&ctx, sizeof ctx);
}

/* The keyed contexts of HMAC-SHA256 under key[0:len] (a key longer than a block is hashed first). */
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
    fs_sha256_init_(&k->inner);
    fs_sha256_update_(&k->inner, block, sizeof block);
    for (i = 0; i < 64; i++) {
        block[i] ^= 0x36 ^ 0x5C;
    }
    fs_sha256_init_(&k->outer);
    fs_sha256_update_(&k->outer, block, sizeof block);
    fs_wipe(block, sizeof block);
}

/* HMAC-SHA256 of msg[0:len] under the keyed contexts k, into out. */
static void fs_hmac_sha256(const fs_hmac_key *k, const uint8_t *msg, size_t len, uint8_t out[32])
{
    fs_sha256_ctx ctx;
    uint8_t inner[32];

    memcpy(&ctx, &k->inner, sizeof ctx);
    fs_sha256_update_(&ctx, msg, len);
    fs_sha256_final_(inner, &ctx);
    memcpy(&ctx, &k->outer, sizeof ctx);
    fs_sha256_update_(&ctx, inner, sizeof inner);
    fs_sha256_final_(out, &ctx);
    fs_wipe(&ctx, sizeof ctx);
    fs_wipe(inner, sizeof inner);
}

/* 1 if the first tag_len (at most 32) bytes of msg's tag equal tag, compared in constant time. */
static int fs_hmac_sha256_verify(const fs_hmac_key *k, const uint8_t *msg, size_t len,
                                 const uint8_t *tag, size_t tag_len)
{
    uint8_t mac[32];
    int equal;

    if (tag_len > sizeof mac) {
        return 0;
    }
    fs_hmac_sha256(k, msg, len, mac);
    equal = fs_memcmp_(mac, tag, tag_len) == 0;
    fs_wipe(mac, sizeof mac);
    return equal;
}

#if defined(_WIN32)

static int fs_libcrypto_load(const char *hashlib_path)
{
    (void)hashlib_path;
    return 0;
}

#else

#include <dlfcn.h>

#ifndef RTLD_NOLOAD
#define RTLD_NOLOAD 0 /* the module is loaded already: dlopen only finds it */
#endif

/* Find OpenSSL's SHA-256 through the loaded module at hashlib_path (CPython's
 * _hashlib), and check it on FIPS 180-4's "abc" example. 1 when it is ready. */
static int fs_libcrypto_load(const char *hashlib_path)
{
    static const uint8_t abc_digest[32] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
        0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad,
    };
    uint8_t out[32];
    void *handle = dlopen(hashlib_path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);

    if (handle == NULL) {
        return 0;
    }
    /* The handle stays open: the functions must outlive this call. */
    fs_sha256_init_ = (fs_sha256_init_fn)dlsym(handle, "SHA256_Init");
    fs_sha256_update_ = (fs_sha256_update_fn)dlsym(handle, "SHA256_Update");
    fs_sha256_final_ = (fs_sha256_final_fn)dlsym(handle, "SHA256_Final");
    fs_memcmp_ = (fs_memcmp_fn)dlsym(handle, "CRYPTO_memcmp");
    if (!fs_sha256_init_ || !fs_sha256_update_ || !fs_sha256_final_ || !fs_memcmp_) {
        return 0;
    }
    fs_sha256((const uint8_t *)"abc", 3, out);
    return memcmp(out, abc_digest, sizeof out) == 0;
}

#endif

#endif /* FASTSESS_LIBCRYPTO_H */
