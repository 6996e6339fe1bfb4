// What every extension module (_jax_mps_cpu, _jax_mps_cuda) exports to Python, written once:
// its FFI table and the shared constants of the contract (activation codes and the "gradient
// from the output" rule, loss / reduction codes, matmul precision codes, optimizer rules, RNN
// cells and workspace size).
// Included by each backend's module.cc; Python reads these from whichever module is loaded.
#pragma once
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "runtime/activation.h"
#include "runtime/losses.h"
#include "runtime/optim.h"
#include "runtime/rnn.h"

namespace jax_mps {

namespace nb = nanobind;

// A contract enum as a Python dict name -> code.
template <class E>
nb::dict Codes(std::initializer_list<std::pair<const char*, E>> items) {
  nb::dict d;
  for (const auto& [name, code] : items) d[name] = static_cast<int64_t>(code);
  return d;
}

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

  // Activation name -> code; the parameters each takes are Python's business (API.md).
  m.attr("ACTIVATIONS") = Codes<Act>({{"none", Act::kNone}, {"relu", Act::kRelu}, {"relu6", Act::kRelu6},
                                      {"leaky_relu", Act::kLeakyRelu}, {"elu", Act::kElu},
                                      {"sigmoid", Act::kSigmoid}, {"hard_sigmoid", Act::kHardSigmoid},
                                      {"tanh", Act::kTanh}, {"softplus", Act::kSoftplus},
                                      {"softsign", Act::kSoftsign}, {"gelu", Act::kGelu},
                                      {"gelu_tanh", Act::kGeluTanh}});
  m.def("act_grad_from_output", [](int64_t code, float alpha) {
    return ValidAct(code) && ActGradFromOutput(static_cast<Act>(code), alpha);
  }, "Whether activation `code` with `alpha` is differentiated from its output alone.");

  m.attr("LOSSES") = Codes<LossKind>({{"softmax_cross_entropy", LossKind::kSoftmaxCE},
                                      {"sigmoid_cross_entropy", LossKind::kSigmoidCE}, {"mse", LossKind::kMSE},
                                      {"mae", LossKind::kMAE}, {"huber", LossKind::kHuber},
                                      {"hinge", LossKind::kHinge}, {"kl_divergence", LossKind::kKL}});
  m.attr("REDUCTIONS") = Codes<Reduction>({{"none", Reduction::kNone}, {"sum", Reduction::kSum},
                                           {"mean", Reduction::kMean},
                                           {"sum_by_nonzero_weights", Reduction::kSumByNonzeroWeights}});
  m.attr("PRECISIONS") = Codes<Precision>({{"default", Precision::kDefault}, {"highest", Precision::kHighest}});

  m.attr("OPTIM_RULES") = Codes<OptRule>({{"sgd", OptRule::kSgd}, {"adam", OptRule::kAdam},
                                          {"rmsprop", OptRule::kRmsprop}});
  m.attr("OPTIM_NORM_MODES") = Codes<NormMode>({{"none", NormMode::kNone}, {"internal", NormMode::kInternal},
                                                {"external", NormMode::kExternal}});
  nb::list hp;  // the order of the hp operand's entries
  for (const char* name : kOptimHpNames) hp.append(name);
  m.attr("OPTIM_HYPER") = hp;

  m.attr("RNN_CELLS") = Codes<Cell>({{"lstm", Cell::kLstm}, {"gru", Cell::kGru}, {"rnn_tanh", Cell::kRnnTanh},
                                     {"rnn_relu", Cell::kRnnRelu}});
  nb::dict gates;  // code -> gates per cell (weights are (I, G*H))
  for (int64_t c = 0; c < int64_t(Cell::kCount); ++c) gates[nb::int_(c)] = RnnDesc{static_cast<Cell>(c), 1, 1, 1, 1, 1, 1, true}.G();
  m.attr("RNN_GATES") = gates;
  m.def("rnn_workspace_size", [](int64_t cell, int64_t L, int64_t D, int64_t H, int64_t T, int64_t B) {
    RnnDesc d{static_cast<Cell>(cell), L, D, H, T, B, 0, true};
    return d.WorkspaceSize();
  }, "float32 elements of the rnn_fwd workspace for (cell, layers, directions, hidden, T, B).");
}

}  // namespace jax_mps
