// Recurrent layers (LSTM, GRU, RNN): backend-neutral descriptor, workspace layout and checks.
// Must match jax_mps/rnn.py (_CELL codes and _workspace_size).
#pragma once
#include <cstdint>

#include "runtime/common.h"

namespace jax_mps {

enum class Cell : int64_t { kLstm = 0, kGru = 1, kRnnTanh = 2, kRnnRelu = 3 };

struct RnnDesc {
  Cell cell;
  int64_t L, D, H, T, B, I;
  bool time_major;

  int64_t G() const { return cell == Cell::kLstm ? 4 : cell == Cell::kGru ? 3 : 1; }
  // Per (time, batch) row of one layer-direction's workspace:
  //   LSTM: i f g o | tanh(c_t) | c_{t-1} | h_{t-1}      (7H)
  //   GRU:  r z n   | W_hn h_{t-1} + b_hn | h_{t-1}      (5H)
  //   RNN:  h_t     | h_{t-1}                            (2H)
  int64_t W() const { return cell == Cell::kLstm ? 7 * H : cell == Cell::kGru ? 5 * H : 2 * H; }
  int64_t HprevCol() const { return W() - H; }
  int64_t Rows() const { return T * B; }
  // Cell workspaces for every layer-direction, then the outputs of layers 0..L-2.
  int64_t WorkspaceSize() const { return L * D * Rows() * W() + (L - 1) * Rows() * D * H; }
  int64_t InputSize(int64_t layer) const { return layer == 0 ? I : D * H; }
  // Rows are in the layout of x: row(t, b) = t * sT + b * sB.
  int64_t sT() const { return time_major ? B : 1; }
  int64_t sB() const { return time_major ? 1 : T; }
};

inline ffi::Error MakeRnnDesc(int64_t cell, int64_t L, int64_t D, int64_t H, int64_t time_major,
                              ffi::Span<const int64_t> xd, RnnDesc* d) {
  JAX_MPS_CHECK(cell >= 0 && cell <= 3, "rnn: unknown cell code ", cell);
  JAX_MPS_CHECK(L >= 1 && (D == 1 || D == 2) && H >= 1, "rnn: bad num_layers/directions/hidden ", L, "/", D,
                "/", H);
  JAX_MPS_CHECK(xd.size() == 3, "rnn: x must have rank 3, got ", DimsStr(xd));
  d->cell = static_cast<Cell>(cell);
  d->L = L;
  d->D = D;
  d->H = H;
  d->time_major = time_major != 0;
  d->T = d->time_major ? xd[0] : xd[1];
  d->B = d->time_major ? xd[1] : xd[0];
  d->I = xd[2];
  JAX_MPS_CHECK(d->T >= 1 && d->B >= 1 && d->I >= 1, "rnn: x must be non-empty, got ", DimsStr(xd));
  return ffi::Error::Success();
}

}  // namespace jax_mps
