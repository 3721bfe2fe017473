// Integer codes that the kernels dispatch on. Mirrors recipe_kernels/_codes.py, the one definition;
// tests/test_codes.py checks that the two agree.
#pragma once

namespace recipe_kernels {

enum DtypeCode : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3, kUInt8 = 4 };
// Not a dtype: an EMA table row copied byte for byte.
constexpr int kRawBytes = 5;

enum MixMode : int { kKeep = 0, kMixUp = 1, kCutMix = 2, kErase = 3 };

enum TargetKind : int { kIndexTarget = 0, kMixedTarget = 1, kProbabilityTarget = 2 };

}  // namespace recipe_kernels
