// Block/warp reductions and the per-channel column sum used by several backward kernels.
#pragma once
#include "cuda/common.cuh"

namespace jax_mps::cuda {

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = (w > v || w != w) ? w : v;  // NaN wins, as jnp.max
  }
  return v;
}
__device__ __forceinline__ double WarpSumD(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
template <typename V>
__device__ V BlockSum(V v) {
  __shared__ V part[32];
  __syncthreads();  // part[] may still be read by a previous call
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  v = lane < nw ? part[lane] : V(0);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Column layout of the per-channel kernels: 32 channels x 8 row lanes per block; blockIdx.x picks
// the channel tile, blockIdx.y a slice of the rows.
constexpr int kColX = 32, kColY = 8;
inline dim3 ColGrid(int64_t rows, int64_t c) {
  const int64_t tiles = (c + kColX - 1) / kColX;
  int64_t ys = (rows + 255) / 256;  // >= 256 rows per row slice
  const int64_t cap = tiles >= 264 ? 1 : 264 / tiles;
  if (ys > cap) ys = cap;
  if (ys < 1) ys = 1;
  return dim3(unsigned(tiles), unsigned(ys));
}

// Reduces the (kColY x kColX) per-thread partials of a column kernel and adds them to out[c]
// (double atomics: deterministic enough and exact to float precision).
__device__ __forceinline__ void ColFlush(double v, double* out, int64_t c, int64_t nc) {
  __shared__ double sm[kColY][kColX + 1];
  sm[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.y == 0) {
    double s = 0.0;
    for (int k = 0; k < kColY; ++k) s += sm[k][threadIdx.x];
    if (c < nc) atomicAdd(out + c, s);
  }
  __syncthreads();
}

}  // namespace jax_mps::cuda
