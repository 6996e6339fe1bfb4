// Recurrent layers (LSTM, GRU, RNN): cell codes, descriptor, workspace layout (its size is
// exported to Python by runtime/export.h), validation and targets.
// Operands: x (T, B, I) time-major or (B, T, I), h0 / c0 (L*D, B, H) (c0 (0,)-sized unless LSTM),
// seq_lengths int32 (B,) (values in [0, T], checked by the kernels), then (w_ih (I_l, G*H),
// w_hh (H, G*H), b_ih (G*H,), b_hh (G*H,)) per layer-direction, layer-major.
#pragma once
#include <cstdint>

#include "runtime/backend.h"

namespace jax_mps {

enum class Cell : int64_t { kLstm = 0, kGru = 1, kRnnTanh = 2, kRnnRelu = 3, kCount = 4 };

struct RnnDesc {
  Cell cell;
  int64_t L, D, H, T, B, I;
  bool time_major;
  // Backward only: whether dh0 / dc0 are wanted (0: the initial state was the implicit zeros, whose
  // gradient nobody reads; the chains skip their last recurrent GEMM and write zeros).
  bool state_grads = true;
  Precision precision = Precision::kDefault;  // of the float32 GEMMs (runtime/backend.h); the CPU ignores it

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

inline ffi::Error MakeRnnDesc(int64_t cell, int64_t L, int64_t D, int64_t H, int64_t time_major, int64_t precision,
                              ffi::Span<const int64_t> xd, RnnDesc* d) {
  JAX_MPS_CHECK(cell >= 0 && cell < int64_t(Cell::kCount), "rnn: unknown cell code ", cell);
  JAX_MPS_RETURN_IF_ERROR(CheckFlag("rnn", "time_major", time_major));
  JAX_MPS_RETURN_IF_ERROR(CheckPrecision("rnn", precision));
  JAX_MPS_CHECK(L >= 1 && (D == 1 || D == 2) && H >= 1, "rnn: bad num_layers/directions/hidden ", L, "/", D,
                "/", H);
  JAX_MPS_CHECK(xd.size() == 3, "rnn: x must have rank 3, got ", DimsStr(xd));
  d->cell = static_cast<Cell>(cell);
  d->L = L;
  d->D = D;
  d->H = H;
  d->time_major = time_major != 0;
  d->precision = static_cast<Precision>(precision);
  d->T = d->time_major ? xd[0] : xd[1];
  d->B = d->time_major ? xd[1] : xd[0];
  d->I = xd[2];
  JAX_MPS_CHECK(d->T >= 1 && d->B >= 1 && d->I >= 1, "rnn: x must be non-empty, got ", DimsStr(xd));
  return ffi::Error::Success();
}

inline int64_t RnnStateSize(const RnnDesc& d) { return d.L * d.D * d.B * d.H; }

// Every operand's shape and dtype against the descriptor.
inline ffi::Error CheckRnnOperands(const char* op, const RnnDesc& d, const ffi::AnyBuffer& x, const ffi::AnyBuffer& h0,
                                   const ffi::AnyBuffer& c0, const ffi::AnyBuffer& lens, const Buffers& w) {
  const int64_t LD = d.L * d.D, B = d.B, H = d.H, GH = d.G() * d.H;
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "x", x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatShape(op, "h0", h0, {LD, B, H}));
  JAX_MPS_RETURN_IF_ERROR(CheckFloat(op, "c0", c0));
  if (d.cell == Cell::kLstm) JAX_MPS_RETURN_IF_ERROR(CheckShape(op, "c0", c0, {LD, B, H}));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "seq_lengths", lens, ffi::S32));
  JAX_MPS_RETURN_IF_ERROR(CheckShape(op, "seq_lengths", lens, {B}));
  JAX_MPS_CHECK(int64_t(w.size()) == 4 * LD, op, ": expected ", 4 * LD, " weight arrays, got ", w.size());
  for (int64_t l = 0; l < d.L; ++l)
    for (int64_t k = 0; k < d.D; ++k) {
      const Dims want[4] = {{d.InputSize(l), GH}, {H, GH}, {GH}, {GH}};
      for (int q = 0; q < 4; ++q)
        JAX_MPS_RETURN_IF_ERROR(CheckFloatShape(op, "weight", w[4 * (l * d.D + k) + q], want[q]));
    }
  return ffi::Error::Success();
}

// ---- rnn_fwd: y (x's layout, last dim D*H), h_n, c_n (LSTM; else (0,)), workspace (f32, WorkspaceSize()) ----
template <class B>
ffi::Error RnnFwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer h0, ffi::AnyBuffer c0, ffi::AnyBuffer lens,
                  ffi::RemainingArgs w_list, ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> hn,
                  ffi::Result<ffi::AnyBuffer> cn, ffi::Result<ffi::AnyBuffer> ws, int64_t cell, int64_t num_layers,
                  int64_t num_dirs, int64_t hidden, int64_t time_major, int64_t precision) {
  const char* op = "rnn_fwd";
  RnnDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakeRnnDesc(cell, num_layers, num_dirs, hidden, time_major, precision, x.dimensions(), &d));
  Buffers w;
  JAX_MPS_RETURN_IF_ERROR(DecodeAll(op, w_list, &w));
  JAX_MPS_RETURN_IF_ERROR(CheckRnnOperands(op, d, x, h0, c0, lens, w));
  const int64_t S = RnnStateSize(d);
  JAX_MPS_RETURN_IF_ERROR(CheckFloatCount(op, "y", *y, d.Rows() * d.D * d.H));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatCount(op, "h_n", *hn, S));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatCount(op, "c_n", *cn, d.cell == Cell::kLstm ? S : 0));
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "workspace", *ws, ffi::F32));
  JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "workspace", *ws, d.WorkspaceSize()));
  return Guard(op, [&] { return B::RnnFwd(ctx, d, x, h0, c0, lens, w, *y, *hn, *cn, *ws); });
}
template <class B>
auto RnnFwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().RemainingArgs().template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Attr<int64_t>("cell").template Attr<int64_t>("num_layers").template Attr<int64_t>("num_dirs")
      .template Attr<int64_t>("hidden").template Attr<int64_t>("time_major").template Attr<int64_t>("precision");
}

// ---- rnn_bwd: dx, dh0, dc0 and one gradient per weight array (same order and shapes) ----
template <class B>
ffi::Error RnnBwd(typename B::Ctx ctx, ffi::AnyBuffer x, ffi::AnyBuffer h0, ffi::AnyBuffer c0, ffi::AnyBuffer lens,
                  ffi::AnyBuffer ws, ffi::AnyBuffer dy, ffi::AnyBuffer dhn, ffi::AnyBuffer dcn,
                  ffi::RemainingArgs w_list, ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dh0,
                  ffi::Result<ffi::AnyBuffer> dc0, ffi::RemainingRets dw_list, int64_t cell, int64_t num_layers,
                  int64_t num_dirs, int64_t hidden, int64_t time_major, int64_t precision, int64_t state_grads) {
  const char* op = "rnn_bwd";
  RnnDesc d;
  JAX_MPS_RETURN_IF_ERROR(MakeRnnDesc(cell, num_layers, num_dirs, hidden, time_major, precision, x.dimensions(), &d));
  JAX_MPS_RETURN_IF_ERROR(CheckFlag(op, "state_grads", state_grads));
  d.state_grads = state_grads != 0;
  Buffers w, dw;
  JAX_MPS_RETURN_IF_ERROR(DecodeAll(op, w_list, &w));
  JAX_MPS_RETURN_IF_ERROR(DecodeAll(op, dw_list, &dw));
  JAX_MPS_RETURN_IF_ERROR(CheckRnnOperands(op, d, x, h0, c0, lens, w));
  const int64_t S = RnnStateSize(d), cnum = d.cell == Cell::kLstm ? S : 0;
  JAX_MPS_RETURN_IF_ERROR(CheckDtype(op, "workspace", ws, ffi::F32));
  JAX_MPS_RETURN_IF_ERROR(CheckCount(op, "workspace", ws, d.WorkspaceSize()));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatCount(op, "dy", dy, d.Rows() * d.D * d.H));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatCount(op, "dh_n", dhn, S));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatCount(op, "dc_n", dcn, cnum));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "dx", *dx, x));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatCount(op, "dh0", *dh0, S));
  JAX_MPS_RETURN_IF_ERROR(CheckFloatCount(op, "dc0", *dc0, cnum));
  JAX_MPS_CHECK(dw.size() == w.size(), op, ": expected ", w.size(), " weight gradients, got ", dw.size());
  for (size_t i = 0; i < w.size(); ++i)
    JAX_MPS_RETURN_IF_ERROR(CheckFloatLike(op, "weight gradient", dw[i], w[i]));
  return Guard(op, [&] { return B::RnnBwd(ctx, d, x, h0, c0, lens, ws, dy, dhn, dcn, w, *dx, *dh0, *dc0, dw); });
}
template <class B>
auto RnnBwdBinding() {
  return ffi::Ffi::Bind().Ctx<typename B::CtxTag>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .RemainingArgs().template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .RemainingRets().template Attr<int64_t>("cell").template Attr<int64_t>("num_layers")
      .template Attr<int64_t>("num_dirs").template Attr<int64_t>("hidden").template Attr<int64_t>("time_major")
      .template Attr<int64_t>("precision").template Attr<int64_t>("state_grads");
}

}  // namespace jax_mps
