/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78) in three flavours, one live.
 *
 * Theory of operation:
 *   - x86-64: the SSE4.2 crc32 instruction, when __builtin_cpu_supports says the CPU has
 *     it. The instruction has a latency of 3 cycles but a throughput of 1 per cycle, so
 *     long buffers are split into three blocks checksummed in one interleaved loop and
 *     the three CRCs are combined with "append N zero bytes" tables (Mark Adler's method);
 *   - aarch64: the ARMv8 CRC extension (crc32cx), when getauxval(AT_HWCAP) has
 *     HWCAP_CRC32;
 *   - anything else: portable slicing-by-8 tables.
 * The choice is made once, when the library is loaded (a constructor also fills the
 * tables, so no call ever races an initialisation). In the tests' build (SL_TESTING)
 * sl_crc32c_force_portable() runs the portable code on a machine with the instructions,
 * so the tests can compare the two.
 * This file owns nothing but the checksum; it never allocates.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "segmentlog.h"

#define POLY 0x82F63B78u

/* Tables: slicing-by-8 for the portable code; "shift by N zero bytes" for combining the
 * three interleaved streams of the hardware code (x86 only). */
static uint32_t crc_table[8][256];

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SL_X86_CRC 1
#include <nmmintrin.h>
#endif

#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__)) && \
    (defined(__linux__) || defined(__APPLE__))
#define SL_ARM_CRC 1
#include <arm_acle.h>
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7) /* arch/arm64/include/uapi/asm/hwcap.h */
#endif
#endif
#endif

enum { IMPL_PORTABLE = 0, IMPL_SSE42 = 1, IMPL_ARMV8 = 2 };

static int best_impl = IMPL_PORTABLE; /* written once, by the constructor */
#ifdef SL_TESTING
static int forced_portable; /* the test hook; read and written atomically */
#endif

static inline uint64_t load64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v); /* memcpy: unaligned-safe, compiles to one load */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* --- portable: slicing-by-8 ------------------------------------------------------- */

static uint32_t crc_portable(uint32_t crc, const unsigned char *p, size_t n) {
    while (n >= 8) {
        uint64_t v = load64(p) ^ crc;
        crc = crc_table[7][v & 0xff] ^ crc_table[6][(v >> 8) & 0xff] ^
              crc_table[5][(v >> 16) & 0xff] ^ crc_table[4][(v >> 24) & 0xff] ^
              crc_table[3][(v >> 32) & 0xff] ^ crc_table[2][(v >> 40) & 0xff] ^
              crc_table[1][(v >> 48) & 0xff] ^ crc_table[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

static void init_tables(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int k = 0; k < 8; k++) crc = (crc & 1) ? (crc >> 1) ^ POLY : crc >> 1;
        crc_table[0][i] = crc;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = crc_table[0][i];
        for (int t = 1; t < 8; t++) {
            crc = crc_table[0][crc & 0xff] ^ (crc >> 8);
            crc_table[t][i] = crc;
        }
    }
}

/* --- x86-64: SSE4.2, three interleaved streams ------------------------------------- */

#ifdef SL_X86_CRC
/* Block sizes of the interleaved loops: three blocks of LONG bytes for big buffers,
 * three of SHORT for medium ones; what is left (and any buffer shorter than 3 * SHORT)
 * runs as one stream. SHORT is small enough that a CADF-sized record (~500 bytes)
 * runs interleaved (benchmarks/README.md, "Design measurements"). */
#define LONG_BLOCK 8192
#define SHORT_BLOCK 128

static uint32_t shift_long[4][256];  /* register -> register after LONG_BLOCK zeros */
static uint32_t shift_short[4][256]; /* register -> register after SHORT_BLOCK zeros */

/* The CRC register after feeding `nbytes` zero bytes, as four byte-indexed tables. CRC
 * without pre/post conditioning is linear over GF(2), so it is enough to push each of
 * the 32 single-bit registers through the zeros once and XOR the images together. */
static void init_shift(uint32_t table[4][256], size_t nbytes) {
    uint32_t image[32];
    for (int bit = 0; bit < 32; bit++) {
        uint32_t reg = (uint32_t)1 << bit;
        for (size_t i = 0; i < nbytes; i++) reg = crc_table[0][reg & 0xff] ^ (reg >> 8);
        image[bit] = reg;
    }
    for (int b = 0; b < 4; b++) {
        for (uint32_t v = 0; v < 256; v++) {
            uint32_t out = 0;
            for (int k = 0; k < 8; k++)
                if (v & (1u << k)) out ^= image[8 * b + k];
            table[b][v] = out;
        }
    }
}

static inline uint32_t shift(uint32_t table[4][256], uint32_t reg) {
    return table[0][reg & 0xff] ^ table[1][(reg >> 8) & 0xff] ^
           table[2][(reg >> 16) & 0xff] ^ table[3][reg >> 24];
}

__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t crc,
                                                           const unsigned char *p,
                                                           size_t n) {
    uint64_t c0 = crc;
    while (n >= 3 * LONG_BLOCK) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *end = p + LONG_BLOCK;
        do {
            c0 = _mm_crc32_u64(c0, load64(p));
            c1 = _mm_crc32_u64(c1, load64(p + LONG_BLOCK));
            c2 = _mm_crc32_u64(c2, load64(p + 2 * LONG_BLOCK));
            p += 8;
        } while (p < end);
        c0 = shift(shift_long, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = shift(shift_long, (uint32_t)c0) ^ (uint32_t)c2;
        p += 2 * LONG_BLOCK;
        n -= 3 * LONG_BLOCK;
    }
    while (n >= 3 * SHORT_BLOCK) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *end = p + SHORT_BLOCK;
        do {
            c0 = _mm_crc32_u64(c0, load64(p));
            c1 = _mm_crc32_u64(c1, load64(p + SHORT_BLOCK));
            c2 = _mm_crc32_u64(c2, load64(p + 2 * SHORT_BLOCK));
            p += 8;
        } while (p < end);
        c0 = shift(shift_short, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = shift(shift_short, (uint32_t)c0) ^ (uint32_t)c2;
        p += 2 * SHORT_BLOCK;
        n -= 3 * SHORT_BLOCK;
    }
    while (n >= 8) {
        c0 = _mm_crc32_u64(c0, load64(p));
        p += 8;
        n -= 8;
    }
    uint32_t c = (uint32_t)c0;
    while (n--) c = _mm_crc32_u8(c, *p++);
    return c;
}
#endif

/* --- aarch64: ARMv8 CRC extension -------------------------------------------------- */

#ifdef SL_ARM_CRC
__attribute__((target("+crc"))) static uint32_t crc_armv8(uint32_t crc,
                                                        const unsigned char *p,
                                                        size_t n) {
    while (n >= 8) {
        crc = __crc32cd(crc, load64(p));
        p += 8;
        n -= 8;
    }
    while (n--) crc = __crc32cb(crc, *p++);
    return crc;
}
#endif

/* --- dispatch ---------------------------------------------------------------------- */

static void crc32c_init(void) {
    init_tables();
#ifdef SL_X86_CRC
    init_shift(shift_long, LONG_BLOCK);
    init_shift(shift_short, SHORT_BLOCK);
    __builtin_cpu_init(); /* required before __builtin_cpu_supports in a constructor */
    if (__builtin_cpu_supports("sse4.2")) best_impl = IMPL_SSE42;
#endif
#ifdef SL_ARM_CRC
#if defined(__linux__)
    if (getauxval(AT_HWCAP) & HWCAP_CRC32) best_impl = IMPL_ARMV8;
#else
    best_impl = IMPL_ARMV8; /* every Apple arm64 CPU has the CRC extension */
#endif
#endif
}

#if defined(__GNUC__) || defined(__clang__)
__attribute__((constructor)) static void crc32c_constructor(void) { crc32c_init(); }
#define ENSURE_INIT() ((void)0)
#else
/* Without constructors the first call initialises; callers of such a build must make
 * one call before starting threads (the Python wrapper does, at import). */
static int initialised;
#define ENSURE_INIT() \
    do {                  \
        if (!initialised) { \
            crc32c_init();  \
            initialised = 1; \
        }                   \
    } while (0)
#endif

static int live_impl(void) {
    ENSURE_INIT();
#ifdef SL_TESTING
#if defined(__GNUC__) || defined(__clang__)
    if (__atomic_load_n(&forced_portable, __ATOMIC_RELAXED)) return IMPL_PORTABLE;
#else
    if (forced_portable) return IMPL_PORTABLE;
#endif
#endif
    return best_impl;
}

uint32_t sl_crc32c(uint32_t crc, const char *buf, uint64_t len) {
    const unsigned char *p = (const unsigned char *)buf;
    if (len == 0) return crc; /* also makes (NULL, 0) safe */
    crc = ~crc;
    switch (live_impl()) {
#ifdef SL_X86_CRC
    case IMPL_SSE42:
        crc = crc_sse42(crc, p, (size_t)len);
        break;
#endif
#ifdef SL_ARM_CRC
    case IMPL_ARMV8:
        crc = crc_armv8(crc, p, (size_t)len);
        break;
#endif
    default:
        crc = crc_portable(crc, p, (size_t)len);
        break;
    }
    return ~crc;
}

const char *sl_crc32c_impl(void) {
    switch (live_impl()) {
    case IMPL_SSE42:
        return "sse4.2";
    case IMPL_ARMV8:
        return "armv8-crc";
    default:
        return "portable";
    }
}

#ifdef SL_TESTING
int sl_crc32c_force_portable(int on) {
    ENSURE_INIT();
#if defined(__GNUC__) || defined(__clang__)
    return __atomic_exchange_n(&forced_portable, on != 0, __ATOMIC_RELAXED);
#else
    int previous = forced_portable;
    forced_portable = on != 0;
    return previous;
#endif
}
#endif
