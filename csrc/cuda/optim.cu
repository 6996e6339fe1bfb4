// Fused optimizer steps (mps.optim) on CUDA: one launch updates every leaf of a dtype group (up to
// kMaxLeaves leaves per launch; larger trees take ceil(n / kMaxLeaves) launches). The leaf table
// travels as a kernel parameter, so no host-to-device copy is needed and the launch can be
// captured in a CUDA graph. The rules are those of csrc/cpu/optim.cc (optax's arithmetic);
// updates happen in place through the aliased buffers. count, sqnorm and the hyperparameters (hp)
// are device data, read by the kernels (no host read, no sync).
#include <algorithm>
#include <vector>

#include "cuda/backend.h"
#include "cuda/common.cuh"
#include "cuda/reduce.cuh"

namespace jax_mps::cuda {
namespace {

constexpr int kMaxLeaves = 192;  // 192 leaves x 80 bytes: ~15 KB of the 32 KB parameter space

struct LeafTable {
  int count;
  int64_t size[kMaxLeaves];
  const void* p[kMaxLeaves];
  const void* g[kMaxLeaves];
  void* out[kMaxLeaves];
  float* s_in[3][kMaxLeaves];
  float* s_out[3][kMaxLeaves];
};

struct StepArgs {
  OptRule rule;
  bool mom, nesterov, ams, centered, write_updates;
  NormMode norm_mode;
};

template <typename P>
__global__ void SqNormK(LeafTable t, const float* hp, double* acc) {
  const OptimPre c = MakeOptimPre(hp, false);
  double part = 0.0;
  for (int l = 0; l < t.count; ++l) {
    const P* g = static_cast<const P*>(t.g[l]);
    float f = 0.f;
    JAX_MPS_GRID_STRIDE(i, t.size[l]) {
      const float v = RescaleClip(Ld(g[i]), c);
      f += v * v;
    }
    part += f;
  }
  part = BlockSum(part);
  if (threadIdx.x == 0) atomicAdd(acc, part);
}

// P: the params' dtype; G: the grads' (float32 params may take float16/bfloat16 grads: mixed precision).
template <typename P, typename G>
__global__ void StepK(LeafTable t, StepArgs a, const int32_t* count, const float* ext_sq, const float* hp,
                      const double* int_sq) {
  OptimPre pre = MakeOptimPre(hp, true);
  const float nlr = -hp[kLr], b1 = hp[kB1], ob1 = hp[kOb1], b2 = hp[kB2], ob2 = hp[kOb2], eps = hp[kEps];
  const float momentum = hp[kMomentum], wd = hp[kWeightDecay], clip_norm = hp[kClipNorm];
  const float tc = float(count[0]);
  const float bc1 = 1.f - powf(b1, tc), bc2 = 1.f - powf(b2, tc);  // as optax: 1 - b**count in float32
  if (a.norm_mode != NormMode::kNone)
    pre.nscale = ClipScale(sqrtf(a.norm_mode == NormMode::kExternal ? ext_sq[0] : float(int_sq[0])), clip_norm);
  for (int l = 0; l < t.count; ++l) {
    const P* p = static_cast<const P*>(t.p[l]);
    const G* g = static_cast<const G*>(t.g[l]);
    P* out = static_cast<P*>(t.out[l]);
    const float *a0 = t.s_in[0][l], *a1 = t.s_in[1][l], *a2 = t.s_in[2][l];
    float *o0 = t.s_out[0][l], *o1 = t.s_out[1][l], *o2 = t.s_out[2][l];
    JAX_MPS_GRID_STRIDE(i, t.size[l]) {
      const float pv = Ld(p[i]);
      // As the CPU: the parameter joins only through a term that is on (0 * inf is NaN).
      const float sg = pv > 0.f ? 1.f : pv < 0.f ? -1.f : pv;  // jnp.sign: NaN stays NaN
      const float l2 = pre.l2 > 0.f ? pre.l2 * pv : 0.f, l1 = pre.l1 > 0.f ? pre.l1 * sg : 0.f;
      const float gv = RescaleClip(Ld(g[i]), pre) * pre.nscale + (l2 + l1);
      float d;
      if (a.rule == OptRule::kSgd) {
        float u = gv;
        if (a.mom) {
          const float tr = gv + momentum * a0[i];
          o0[i] = tr;
          u = a.nesterov ? gv + momentum * tr : tr;
        }
        d = nlr * u;
      } else if (a.rule == OptRule::kAdam) {
        const float m = ob1 * gv + b1 * a0[i];
        const float v = ob2 * (gv * gv) + b2 * a1[i];
        o0[i] = m;
        o1[i] = v;
        float vh = v / bc2;
        if (a.ams) {
          const float prev = a2[i];  // jnp.maximum, as the CPU: NaN if either is NaN
          vh = (prev != prev || vh != vh) ? prev + vh : fmaxf(prev, vh);
          o2[i] = vh;
        }
        const float u = (m / bc1) / (sqrtf(vh) + eps);
        d = nlr * (wd > 0.f ? u + wd * pv : u);
      } else {
        const float v = ob2 * (gv * gv) + b2 * a0[i];
        o0[i] = v;
        float den = v;
        if (a.centered) {
          const float m = ob2 * gv + b2 * a1[i];
          o1[i] = m;
          den = v - m * m;
        }
        d = nlr * (rsqrtf(den + eps) * gv);  // lax.rsqrt, as optax (XLA:GPU lowers it to rsqrt too)
        if (a.mom) {
          const float* ti = a.centered ? a2 : a1;
          float* to = a.centered ? o2 : o1;
          const float tr = d + momentum * ti[i];
          to[i] = tr;
          d = tr;
        }
      }
      out[i] = St<P>(a.write_updates ? d : pv + d);  // updates: p unread (0 * inf)
    }
  }
}

unsigned GridFor(const LeafTable& t) {
  int64_t total = 0;
  for (int l = 0; l < t.count; ++l) total += t.size[l];
  return Blocks(total, 256, 132 * 8);
}

// Squared norm of the (rescaled, value-clipped) gradients of `leaves` added to *acc (zeroed by the caller).
ffi::Error LaunchSqNorm(const Ctx& ctx, const char* op, ffi::DataType dtype, std::vector<LeafTable>& tables,
                        const float* hp, double* acc) {
  return cuda::DispatchFloat(op, dtype, [&](auto tag) {
    using P = decltype(tag);
    for (auto& t : tables) SqNormK<P><<<GridFor(t), 256, 0, ctx.stream>>>(t, hp, acc);
    return LaunchStatus(op);
  });
}

__global__ void ToFloat(const double* s, float* out) { out[0] = float(s[0]); }

// The leaf tables of leaves `grads` (and, for a step, params/outs/slots), kMaxLeaves per launch.
void AddLeaf(std::vector<LeafTable>& tables, int64_t l) {
  if (l % kMaxLeaves == 0) {
    tables.emplace_back();
    std::memset(&tables.back(), 0, sizeof(LeafTable));
  }
}

}  // namespace
}  // namespace jax_mps::cuda

namespace jax_mps {
using namespace cuda;  // NOLINT: the kernels above

ffi::Error Cuda::OptimStep(Cuda::Ctx s, const OptimDesc& d, Buf count, Buf sqnorm, Buf hp, const Buffers& args,
                           const Buffers& rets) {
  const char* op = "optim";
  const int64_t n = d.n;
  if (n == 0) return ffi::Error::Success();
  const ffi::DataType dtype = args[0].element_type(), gdtype = args[n].element_type();
  std::vector<LeafTable> tables;
  for (int64_t l = 0; l < n; ++l) {
    JAX_MPS_RETURN_IF_ERROR(SameDtype(op, args[0], {&args[l], &rets[l]}));
    JAX_MPS_RETURN_IF_ERROR(SameDtype(op, args[n], {&args[n + l]}));
    AddLeaf(tables, l);
    LeafTable& t = tables.back();
    const int k = t.count++;
    t.size[k] = int64_t(args[l].element_count());
    t.p[k] = args[l].untyped_data();
    t.g[k] = args[n + l].untyped_data();
    t.out[k] = rets[l].untyped_data();
    for (int64_t q = 0; q < d.nslots; ++q) {
      t.s_in[q][k] = static_cast<float*>(args[(2 + q) * n + l].untyped_data());
      t.s_out[q][k] = static_cast<float*>(rets[(1 + q) * n + l].untyped_data());
    }
  }
  StepArgs a;
  a.rule = d.rule;
  a.mom = d.Momentum();
  a.nesterov = d.nesterov; a.ams = d.amsgrad; a.centered = d.centered; a.write_updates = d.write_updates;
  a.norm_mode = d.norm_mode;
  double* int_sq = nullptr;
  if (d.norm_mode == NormMode::kInternal) {
    ffi::Error err;
    int_sq = static_cast<double*>(Workspace(s, sizeof(double), op, &err));
    if (!int_sq) return err;
    JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemsetAsync(int_sq, 0, sizeof(double), s));
    JAX_MPS_RETURN_IF_ERROR(LaunchSqNorm(s, op, gdtype, tables, Ptr<const float>(hp), int_sq));
  }
  auto launch = [&](auto ptag, auto gtag) {
    using P = decltype(ptag);
    using G = decltype(gtag);
    for (auto& t : tables)
      StepK<P, G><<<GridFor(t), 256, 0, s>>>(t, a, Ptr<const int32_t>(count), Ptr<const float>(sqnorm),
                                             Ptr<const float>(hp), int_sq);
    return LaunchStatus(op);
  };
  if (gdtype == dtype)
    return cuda::DispatchFloat(op, dtype, [&](auto tag) { return launch(tag, tag); });
  // The runtime allows a different grad dtype only for float32 params.
  return cuda::DispatchFloat(op, gdtype, [&](auto gtag) { return launch(float{}, gtag); });
}

ffi::Error Cuda::OptimSqNorm(Cuda::Ctx s, Buf hp, const Buffers& grads, Buf out) {
  const char* op = "optim_sqnorm";
  std::vector<LeafTable> tables;
  for (size_t l = 0; l < grads.size(); ++l) {
    JAX_MPS_RETURN_IF_ERROR(SameDtype(op, grads[0], {&grads[l]}));
    AddLeaf(tables, int64_t(l));
    LeafTable& t = tables.back();
    t.size[t.count] = int64_t(grads[l].element_count());
    t.g[t.count++] = grads[l].untyped_data();
  }
  ffi::Error err;
  double* acc = static_cast<double*>(Workspace(s, sizeof(double), op, &err));
  if (!acc) return err;
  JAX_MPS_CUDA_RETURN_IF_ERROR(op, cudaMemsetAsync(acc, 0, sizeof(double), s));
  if (!tables.empty())
    JAX_MPS_RETURN_IF_ERROR(LaunchSqNorm(s, op, grads[0].element_type(), tables, Ptr<const float>(hp), acc));
  ToFloat<<<1, 1, 0, s>>>(acc, Ptr<float>(out));
  return LaunchStatus(op);
}

}  // namespace jax_mps
