// Activations, PReLU and softmax / log-softmax on the CPU.
#include <cmath>

#include "cpu/backend.h"
#include "cpu/dnnl_common.h"
#include "cpu/eltwise.h"
#include "cpu/f32.h"

namespace jax_mps::cpu {

using dnnl::algorithm;

bool DnnlEltwiseAlg(Act act, float alpha, bool from_output, algorithm* alg, float* a, float* b) {
  *a = 0.f;
  *b = 0.f;
  switch (act) {
    case Act::kRelu: *alg = from_output ? algorithm::eltwise_relu_use_dst_for_bwd : algorithm::eltwise_relu; return true;
    case Act::kLeakyRelu: *alg = from_output ? algorithm::eltwise_relu_use_dst_for_bwd : algorithm::eltwise_relu; *a = alpha; return true;
    case Act::kRelu6: *alg = from_output ? algorithm::eltwise_clip_v2_use_dst_for_bwd : algorithm::eltwise_clip_v2; *b = 6.f; return true;
    case Act::kElu: *alg = from_output ? algorithm::eltwise_elu_use_dst_for_bwd : algorithm::eltwise_elu; *a = alpha; return true;
    case Act::kSigmoid: *alg = from_output ? algorithm::eltwise_logistic_use_dst_for_bwd : algorithm::eltwise_logistic; return true;
    case Act::kTanh: *alg = from_output ? algorithm::eltwise_tanh_use_dst_for_bwd : algorithm::eltwise_tanh; return true;
    case Act::kHardSigmoid: *alg = algorithm::eltwise_hardsigmoid; *a = 1.f / 6.f; *b = 0.5f; return !from_output;
    case Act::kSoftplus: *alg = algorithm::eltwise_soft_relu; *a = 1.f; return !from_output;
    case Act::kGelu: *alg = algorithm::eltwise_gelu_erf; return !from_output;
    case Act::kGeluTanh: *alg = algorithm::eltwise_gelu_tanh; return !from_output;
    default: return false;
  }
}

namespace {

struct EltwisePlan {
  dnnl::eltwise_forward fwd;
  dnnl::eltwise_backward bwd;
  dnnl::memory::desc md;
};

EltwisePlan* GetPlan(Act act, float alpha, int64_t n, bool from_output) {
  static PlanCache<EltwisePlan> cache;
  thread_local PlanKey key;
  key.v.clear();
  key.add(static_cast<int64_t>(act)).add(static_cast<double>(alpha)).add(n).add(int64_t(from_output));
  return cache.Get(key, [&] {
    algorithm alg = algorithm::eltwise_relu;
    float a, b;
    DnnlEltwiseAlg(act, alpha, from_output, &alg, &a, &b);
    auto md = FlatF32(n);
    dnnl::eltwise_forward::primitive_desc fpd(Engine(), dnnl::prop_kind::forward_training, alg, md, md, a, b, UserAttr());
    dnnl::eltwise_backward::primitive_desc bpd(Engine(), alg, md, md, md, a, b, fpd, UserAttr());
    return EltwisePlan{dnnl::eltwise_forward(fpd), dnnl::eltwise_backward(bpd), md};
  }).get();
}

}  // namespace

void ActForward(Act act, float alpha, int64_t n, const float* x, float* y) {
  if (n == 0) return;
  if (act == Act::kNone) {
    if (x != y) std::memcpy(y, x, n * sizeof(float));
    return;
  }
  if (act == Act::kSoftsign) {
#pragma omp parallel for simd if (n > 65536)
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.f + std::fabs(x[i]));
    return;
  }
  EltwisePlan* p = GetPlan(act, alpha, n, false);
  Exec(p->fwd, {{DNNL_ARG_SRC, Mem(p->md, x)}, {DNNL_ARG_DST, Mem(p->md, y)}});
}

void ActBackward(Act act, float alpha, int64_t n, const float* s, const float* dy, float* dx,
                 bool from_output) {
  if (n == 0) return;
  if (act == Act::kNone) {
    if (dx != dy) std::memcpy(dx, dy, n * sizeof(float));
    return;
  }
  if (act == Act::kSoftsign) {
#pragma omp parallel for simd if (n > 65536)
    for (int64_t i = 0; i < n; ++i) {
      float d = 1.f + std::fabs(s[i]);
      dx[i] = dy[i] / (d * d);
    }
    return;
  }
  EltwisePlan* p = GetPlan(act, alpha, n, from_output);
  Exec(p->bwd, {{from_output ? DNNL_ARG_DST : DNNL_ARG_SRC, Mem(p->md, s)},
                            {DNNL_ARG_DIFF_DST, Mem(p->md, dy)},
                            {DNNL_ARG_DIFF_SRC, Mem(p->md, dx)}});
}

namespace {

// Softmax over axis 1 of x viewed as (outer, axis, inner).
struct SoftmaxPlan {
  dnnl::softmax_forward fwd;
  dnnl::softmax_backward bwd;
  dnnl::memory::desc md;
};

SoftmaxPlan* GetSoftmax(const SoftmaxDesc& d) {
  static PlanCache<SoftmaxPlan> cache;
  PlanKey key;
  key.add(d.outer).add(d.axis).add(d.inner).add(int64_t(d.log));
  return cache.Get(key, [&] {
    dnnl::memory::desc md({d.outer, d.axis, d.inner}, dt::f32, tag::abc);
    auto alg = d.log ? algorithm::softmax_log : algorithm::softmax_accurate;
    dnnl::softmax_forward::primitive_desc fpd(Engine(), dnnl::prop_kind::forward_training, alg, md, md, 1, UserAttr());
    dnnl::softmax_backward::primitive_desc bpd(Engine(), alg, md, md, md, 1, fpd, UserAttr());
    return SoftmaxPlan{dnnl::softmax_forward(fpd), dnnl::softmax_backward(bpd), md};
  }).get();
}

}  // namespace
}  // namespace jax_mps::cpu

namespace jax_mps {

using namespace cpu;

ffi::Error Cpu::ActivationFwd(Ctx, Buf x, Buf y, Act act, float alpha) {
  F32In xf(x);
  F32Out yf(y);
  ActForward(act, alpha, x.element_count(), xf.get(), yf.get());
  return ffi::Error::Success();
}

ffi::Error Cpu::ActivationBwd(Ctx, Buf x, Buf dy, Buf dx, Act act, float alpha) {
  F32In xf(x), dyf(dy);
  F32Out dxf(dx);
  ActBackward(act, alpha, x.element_count(), xf.get(), dyf.get(), dxf.get(), false);
  return ffi::Error::Success();
}

ffi::Error Cpu::PreluFwd(Ctx, const PreluDesc& d, Buf x, Buf alpha, Buf y) {
  F32In xf(x), af(alpha);
  F32Out yf(y);
  const int64_t rows = d.rows, c = d.c;
  const float* xp = xf.get();
  const float* ap = af.get();
  float* yp = yf.get();
#pragma omp parallel for if (rows * c > 65536)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < c; ++j) {
      float v = xp[r * c + j];
      yp[r * c + j] = v > 0.f ? v : ap[j] * v;
    }
  return ffi::Error::Success();
}

ffi::Error Cpu::PreluBwd(Ctx, const PreluDesc& d, Buf x, Buf alpha, Buf dy, Buf dx, Buf dalpha) {
  F32In xf(x), af(alpha), gf(dy);
  F32Out dxf(dx), daf(dalpha);
  const int64_t rows = d.rows, c = d.c;
  const float* xp = xf.get();
  const float* ap = af.get();
  const float* g = gf.get();
  float* dxp = dxf.get();
  float* dap = daf.get();
  for (int64_t j = 0; j < c; ++j) dap[j] = 0.f;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < c; ++j) {
      float v = xp[r * c + j], gv = g[r * c + j];
      dxp[r * c + j] = v > 0.f ? gv : ap[j] * gv;
      if (v <= 0.f) dap[j] += gv * v;
    }
  return ffi::Error::Success();
}

ffi::Error Cpu::SoftmaxFwd(Ctx, const SoftmaxDesc& d, Buf x, Buf y) {
  if (x.element_count() == 0) return ffi::Error::Success();
  F32In xf(x);
  F32Out yf(y);
  SoftmaxPlan* p = GetSoftmax(d);
  Exec(p->fwd, {{DNNL_ARG_SRC, Mem(p->md, xf.get())}, {DNNL_ARG_DST, Mem(p->md, yf.get())}});
  return ffi::Error::Success();
}

ffi::Error Cpu::SoftmaxBwd(Ctx, const SoftmaxDesc& d, Buf y, Buf dy, Buf dx) {
  if (y.element_count() == 0) return ffi::Error::Success();
  F32In yf(y), dyf(dy);
  F32Out dxf(dx);
  SoftmaxPlan* p = GetSoftmax(d);
  Exec(p->bwd, {{DNNL_ARG_DST, Mem(p->md, yf.get())},
                {DNNL_ARG_DIFF_DST, Mem(p->md, dyf.get())},
                {DNNL_ARG_DIFF_SRC, Mem(p->md, dxf.get())}});
  return ffi::Error::Success();
}

}  // namespace jax_mps
