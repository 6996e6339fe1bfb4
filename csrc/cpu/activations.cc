// Activations, PReLU and softmax / log-softmax on the CPU.
#include <cmath>

#include "cpu/dnnl_common.h"
#include "cpu/eltwise.h"
#include "runtime/registry.h"

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

ffi::Error CheckAct(int64_t act) {
  JAX_MPS_CHECK(ValidAct(act), "activation: unknown activation code ", act);
  return ffi::Error::Success();
}

ffi::Error ActFwd(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, int64_t act, float alpha) {
  JAX_MPS_RETURN_IF_ERROR(CheckAct(act));
  return Guard("activation_fwd", [&] {
    ActForward(static_cast<Act>(act), alpha, x.element_count(), x.typed_data(), y->typed_data());
    return ffi::Error::Success();
  });
}

ffi::Error ActBwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx,
                  int64_t act, float alpha) {
  JAX_MPS_RETURN_IF_ERROR(CheckAct(act));
  JAX_MPS_CHECK(x.element_count() == dy.element_count(), "activation_bwd: x has ",
                x.element_count(), " elements but dy has ", dy.element_count());
  return Guard("activation_bwd", [&] {
    ActBackward(static_cast<Act>(act), alpha, x.element_count(), x.typed_data(), dy.typed_data(),
                dx->typed_data(), false);
    return ffi::Error::Success();
  });
}

// PReLU with a per-channel slope over the last axis: y = x > 0 ? x : alpha[c] * x.
ffi::Error CheckPrelu(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& alpha, int64_t* c) {
  auto xd = x.dimensions();
  JAX_MPS_CHECK(xd.size() >= 1, "prelu: x must have rank >= 1");
  *c = xd.back();
  JAX_MPS_CHECK(static_cast<int64_t>(alpha.element_count()) == *c, "prelu: alpha must have shape (", *c, ",), got ",
                DimsStr(alpha.dimensions()));
  return ffi::Error::Success();
}

ffi::Error PreluFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> alpha, ffi::ResultBuffer<ffi::F32> y) {
  int64_t c = 0;
  JAX_MPS_RETURN_IF_ERROR(CheckPrelu(x, alpha, &c));
  const int64_t rows = c ? x.element_count() / c : 0;
  const float* xp = x.typed_data();
  const float* ap = alpha.typed_data();
  float* yp = y->typed_data();
#pragma omp parallel for if (rows * c > 65536)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < c; ++j) {
      float v = xp[r * c + j];
      yp[r * c + j] = v > 0.f ? v : ap[j] * v;
    }
  return ffi::Error::Success();
}

ffi::Error PreluBwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> alpha, ffi::Buffer<ffi::F32> dy,
                    ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dalpha) {
  int64_t c = 0;
  JAX_MPS_RETURN_IF_ERROR(CheckPrelu(x, alpha, &c));
  JAX_MPS_CHECK(dy.element_count() == x.element_count(), "prelu_bwd: dy/x size mismatch");
  const int64_t rows = c ? x.element_count() / c : 0;
  const float* xp = x.typed_data();
  const float* ap = alpha.typed_data();
  const float* g = dy.typed_data();
  float* dxp = dx->typed_data();
  float* dap = dalpha->typed_data();
  for (int64_t j = 0; j < c; ++j) dap[j] = 0.f;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < c; ++j) {
      float v = xp[r * c + j], gv = g[r * c + j];
      dxp[r * c + j] = v > 0.f ? gv : ap[j] * gv;
      if (v <= 0.f) dap[j] += gv * v;
    }
  return ffi::Error::Success();
}

// Softmax over axis 1 of x viewed as (outer, axis, inner).
struct SoftmaxPlan {
  dnnl::softmax_forward fwd;
  dnnl::softmax_backward bwd;
  dnnl::memory::desc md;
};

ffi::Error SoftmaxView(ffi::Span<const int64_t> d, int64_t axis, int64_t* o, int64_t* a, int64_t* in) {
  JAX_MPS_CHECK(axis >= 0 && axis < static_cast<int64_t>(d.size()), "softmax: axis ", axis,
                " out of range for shape ", DimsStr(d));
  *o = 1;
  *in = 1;
  for (int64_t i = 0; i < axis; ++i) *o *= d[i];
  *a = d[axis];
  for (size_t i = axis + 1; i < d.size(); ++i) *in *= d[i];
  return ffi::Error::Success();
}

SoftmaxPlan* GetSoftmax(int64_t o, int64_t a, int64_t in, bool log) {
  static PlanCache<SoftmaxPlan> cache;
  PlanKey key;
  key.add(o).add(a).add(in).add(int64_t(log));
  return cache.Get(key, [&] {
    dnnl::memory::desc md({o, a, in}, dt::f32, tag::abc);
    auto alg = log ? algorithm::softmax_log : algorithm::softmax_accurate;
    dnnl::softmax_forward::primitive_desc fpd(Engine(), dnnl::prop_kind::forward_training, alg, md, md, 1, UserAttr());
    dnnl::softmax_backward::primitive_desc bpd(Engine(), alg, md, md, md, 1, fpd, UserAttr());
    return SoftmaxPlan{dnnl::softmax_forward(fpd), dnnl::softmax_backward(bpd), md};
  }).get();
}

ffi::Error SoftmaxFwd(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, int64_t axis, int64_t log) {
  int64_t o = 0, a = 0, in = 0;
  JAX_MPS_RETURN_IF_ERROR(SoftmaxView(x.dimensions(), axis, &o, &a, &in));
  if (x.element_count() == 0) return ffi::Error::Success();
  return Guard("softmax_fwd", [&] {
    SoftmaxPlan* p = GetSoftmax(o, a, in, log != 0);
    Exec(p->fwd, {{DNNL_ARG_SRC, Mem(p->md, x.typed_data())}, {DNNL_ARG_DST, Mem(p->md, y->typed_data())}});
      return ffi::Error::Success();
  });
}

ffi::Error SoftmaxBwd(ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx,
                      int64_t axis, int64_t log) {
  int64_t o = 0, a = 0, in = 0;
  JAX_MPS_RETURN_IF_ERROR(SoftmaxView(y.dimensions(), axis, &o, &a, &in));
  JAX_MPS_CHECK(dy.element_count() == y.element_count(), "softmax_bwd: dy/y size mismatch");
  if (y.element_count() == 0) return ffi::Error::Success();
  return Guard("softmax_bwd", [&] {
    SoftmaxPlan* p = GetSoftmax(o, a, in, log != 0);
    Exec(p->bwd, {{DNNL_ARG_DST, Mem(p->md, y.typed_data())},
                              {DNNL_ARG_DIFF_DST, Mem(p->md, dy.typed_data())},
                              {DNNL_ARG_DIFF_SRC, Mem(p->md, dx->typed_data())}});
      return ffi::Error::Success();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(kActFwd, ActFwd,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("act").Attr<float>("alpha"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kActBwd, ActBwd,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("act").Attr<float>("alpha"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kPreluFwd, PreluFwd,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(kPreluBwd, PreluBwd,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(kSoftmaxFwd, SoftmaxFwd,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("axis").Attr<int64_t>("log"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(kSoftmaxBwd, SoftmaxBwd,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("axis").Attr<int64_t>("log"));

JAX_MPS_REGISTER("jax_mps_activation_fwd", "cpu", kActFwd);
JAX_MPS_REGISTER("jax_mps_activation_bwd", "cpu", kActBwd);
JAX_MPS_REGISTER("jax_mps_prelu_fwd", "cpu", kPreluFwd);
JAX_MPS_REGISTER("jax_mps_prelu_bwd", "cpu", kPreluBwd);
JAX_MPS_REGISTER("jax_mps_softmax_fwd", "cpu", kSoftmaxFwd);
JAX_MPS_REGISTER("jax_mps_softmax_bwd", "cpu", kSoftmaxBwd);

}  // namespace jax_mps::cpu
