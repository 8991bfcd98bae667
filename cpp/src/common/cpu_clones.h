// CPU loops compiled twice, for AVX2 and for the baseline, and picked at load time (GCC function
// multi-versioning). No FMA in either, so every version rounds alike and results do not depend
// on the processor. Internal; not installed.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FLUORO_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FLUORO_CPU_CLONES
#endif
