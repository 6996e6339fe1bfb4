// What every extension module (_jax_mps_cpu, _jax_mps_cuda) exports to Python, written once:
// its FFI table and the shared constants of the contract (activation codes and the "gradient
// from the output" rule, loss / reduction codes, matmul precision codes, optimizer rules, RNN
// cells and workspace size).
// Included by each backend's module.cc; Python reads these from whichever module is loaded.
#pragma once
#include <string>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "runtime/activation.h"
#include "runtime/losses.h"
#include "runtime/optim.h"
#include "runtime/rnn.h"

namespace jax_mps {

namespace nb = nanobind;

// registrations() -> [(name, platform, capsule)], backend() -> (key, library versions), and the
// contract's constants.
inline void ExportContract(nb::module_& m, const std::vector<Target>& targets, const char* platform,
                           const char* key, std::string versions) {
  m.def("registrations", [&targets, p = std::string(platform)] {
    nb::list out;
    for (const Target& t : targets) out.append(nb::make_tuple(t.name, p, nb::capsule(t.handler)));
    return out;
  }, "List of (target name, platform, handler capsule) for every FFI target of this backend.");
  m.def("backend", [k = std::string(key), v = std::move(versions)] { return nb::make_tuple(k, v); },
        "(key, library versions) of this backend.");
  // Each module has its own plan caches (runtime/common.h's globals are per shared library), so
  // jax_mps.set_plan_cache_size sets the limit in every loaded module.
  m.def("set_plan_cache_size", [](int64_t n) { g_plan_cache_limit = n; },
        "Most plans each op family's plan cache keeps (least recently used dropped first).");
  m.def("plan_cache_size", [] { return g_plan_cache_limit.load(); });
  m.def("plan_cache_entries", [] { return g_plan_cache_entries.load(); },
        "Plans held by all plan caches of this module together.");

  nb::dict act;  // name -> code; the parameters each takes are Python's business (API.md)
  act["none"] = int64_t(Act::kNone);
  act["relu"] = int64_t(Act::kRelu);
  act["relu6"] = int64_t(Act::kRelu6);
  act["leaky_relu"] = int64_t(Act::kLeakyRelu);
  act["elu"] = int64_t(Act::kElu);
  act["sigmoid"] = int64_t(Act::kSigmoid);
  act["hard_sigmoid"] = int64_t(Act::kHardSigmoid);
  act["tanh"] = int64_t(Act::kTanh);
  act["softplus"] = int64_t(Act::kSoftplus);
  act["softsign"] = int64_t(Act::kSoftsign);
  act["gelu"] = int64_t(Act::kGelu);
  act["gelu_tanh"] = int64_t(Act::kGeluTanh);
  m.attr("ACTIVATIONS") = act;
  m.def("act_grad_from_output", [](int64_t code, float alpha) {
    return ValidAct(code) && ActGradFromOutput(static_cast<Act>(code), alpha);
  }, "Whether activation `code` with `alpha` is differentiated from its output alone.");

  nb::dict loss;
  loss["softmax_cross_entropy"] = int64_t(LossKind::kSoftmaxCE);
  loss["sigmoid_cross_entropy"] = int64_t(LossKind::kSigmoidCE);
  loss["mse"] = int64_t(LossKind::kMSE);
  loss["mae"] = int64_t(LossKind::kMAE);
  loss["huber"] = int64_t(LossKind::kHuber);
  loss["hinge"] = int64_t(LossKind::kHinge);
  loss["kl_divergence"] = int64_t(LossKind::kKL);
  m.attr("LOSSES") = loss;
  nb::dict red;
  red["none"] = int64_t(Reduction::kNone);
  red["sum"] = int64_t(Reduction::kSum);
  red["mean"] = int64_t(Reduction::kMean);
  red["sum_by_nonzero_weights"] = int64_t(Reduction::kSumByNonzeroWeights);
  m.attr("REDUCTIONS") = red;

  nb::dict prec;
  prec["default"] = int64_t(Precision::kDefault);
  prec["highest"] = int64_t(Precision::kHighest);
  m.attr("PRECISIONS") = prec;

  nb::dict rules;
  rules["sgd"] = int64_t(OptRule::kSgd);
  rules["adam"] = int64_t(OptRule::kAdam);
  rules["rmsprop"] = int64_t(OptRule::kRmsprop);
  m.attr("OPTIM_RULES") = rules;
  nb::dict norm;
  norm["none"] = int64_t(NormMode::kNone);
  norm["internal"] = int64_t(NormMode::kInternal);
  norm["external"] = int64_t(NormMode::kExternal);
  m.attr("OPTIM_NORM_MODES") = norm;
  nb::list hp;  // the order of the hp operand's entries
  for (const char* name : kOptimHpNames) hp.append(name);
  m.attr("OPTIM_HYPER") = hp;

  nb::dict cells;
  cells["lstm"] = int64_t(Cell::kLstm);
  cells["gru"] = int64_t(Cell::kGru);
  cells["rnn_tanh"] = int64_t(Cell::kRnnTanh);
  cells["rnn_relu"] = int64_t(Cell::kRnnRelu);
  m.attr("RNN_CELLS") = cells;
  nb::dict gates;  // code -> gates per cell (weights are (I, G*H))
  for (int64_t c = 0; c < int64_t(Cell::kCount); ++c) gates[nb::int_(c)] = RnnDesc{static_cast<Cell>(c), 1, 1, 1, 1, 1, 1, true}.G();
  m.attr("RNN_GATES") = gates;
  m.def("rnn_workspace_size", [](int64_t cell, int64_t L, int64_t D, int64_t H, int64_t T, int64_t B) {
    RnnDesc d{static_cast<Cell>(cell), L, D, H, T, B, 0, true};
    return d.WorkspaceSize();
  }, "float32 elements of the rnn_fwd workspace for (cell, layers, directions, hidden, T, B).");
}

}  // namespace jax_mps
