// Philox4x32 and the dropout keep decision: the package's RNG contract (recipe_kernels/_philox.py).
// __host__ __device__ so that the CPU tests can check, through _C's host entry points, that this
// code yields the same words as the Triton kernels and the torch reference, bit for bit.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define RK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RK_HOST_DEVICE inline
#endif

namespace recipe_kernels {

constexpr int kPhiloxRounds = 7;  // must equal _philox.PHILOX_ROUNDS
constexpr int kKeepBits = 24;     // must equal _philox.KEEP_BITS

struct PhiloxWords {
  uint32_t word[4];
};

RK_HOST_DEVICE uint32_t mulhi32(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Philox4x32 with key = seed and counter = (counter lo, counter hi, 0, 0).
RK_HOST_DEVICE PhiloxWords philox4x32(uint64_t seed, uint64_t counter) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
#pragma unroll
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const uint32_t hi_b = mulhi32(0xCD9E8D57u, c2), lo_b = 0xCD9E8D57u * c2;
    const uint32_t hi_a = mulhi32(0xD2511F53u, c0), lo_a = 0xD2511F53u * c0;
    c0 = hi_b ^ c1 ^ k0;
    c1 = lo_b;
    c2 = hi_a ^ c3 ^ k1;
    c3 = lo_a;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return PhiloxWords{{c0, c1, c2, c3}};
}

// An element is kept iff the top kKeepBits bits of its word reach round(p * 2^kKeepBits).
RK_HOST_DEVICE bool keep_element(uint32_t word, uint32_t drop_threshold) {
  return (word >> (32 - kKeepBits)) >= drop_threshold;
}

// Word j (0..3) of `words`, by selects: indexing with a runtime j would put the words in local memory.
RK_HOST_DEVICE uint32_t word_at(const PhiloxWords& words, uint64_t j) {
  const uint32_t even = (j & 2) ? words.word[2] : words.word[0];
  const uint32_t odd = (j & 2) ? words.word[3] : words.word[1];
  return (j & 1) ? odd : even;
}

// The keep decision of the element with logical index `index`: word index & 3 of call index >> 2.
RK_HOST_DEVICE bool keep_index(uint64_t seed, uint64_t index, uint32_t drop_threshold) {
  return keep_element(word_at(philox4x32(seed, index >> 2), index & 3), drop_threshold);
}

}  // namespace recipe_kernels
