// Winograd F(2x2, 3x3) for 3x3, stride-1, undilated, ungrouped convolutions (NHWC, HWIO): 2.25x
// fewer multiplies than the direct convolution, which is where InceptionV3's big 3x3 layers spend
// their time on the CPU (oneDNN 3.2 has no f32 Winograd). Forward, backward data (the forward over
// dz with the flipped, transposed kernel) and backward weights (F(3x3, 2x2): dz tiles as filters).
#pragma once
#include <cstdint>

#include "runtime/conv.h"

namespace jax_mps::cpu {

// Whether c runs through these kernels (JAX_MPS_WINOGRAD=0 in the environment: never; =1: for every
// 3x3 stride-1 convolution, as the tests do).
// Each pass returns false when its result holds a non-finite value: the caller then recomputes it
// directly (see winograd.cc).
bool UseWinograd(const ConvDesc& c);

// y = act(conv(x, w) + b) (b may be null).
bool WinogradFwd(const ConvDesc& c, const float* x, const float* w, const float* b, float* y);
// dx from dz = dy * act'(.).
bool WinogradBwdData(const ConvDesc& c, const float* dz, const float* w, float* dx);
// dw (HWIO) and db (may be null) from x and dz.
bool WinogradBwdWeights(const ConvDesc& c, const float* x, const float* dz, float* dw, float* db);

}  // namespace jax_mps::cpu
