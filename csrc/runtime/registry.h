// One table of FFI targets. Each op file registers its handlers with JAX_MPS_REGISTER at static
// initialisation; module.cc hands the table to Python, which registers every entry with XLA.
#pragma once
#include <string>
#include <vector>

namespace jax_mps {

struct Target {
  std::string name;      // jax_mps_<op>_<fwd|bwd>
  std::string platform;  // "cpu" or "CUDA"
  void* handler;         // XLA_FFI_Handler*
};

std::vector<Target>& Registry();

struct Registrar {
  Registrar(const char* name, const char* platform, void* handler) {
    Registry().push_back({name, platform, handler});
  }
};

}  // namespace jax_mps

#define JAX_MPS_CONCAT_(a, b) a##b
#define JAX_MPS_CONCAT(a, b) JAX_MPS_CONCAT_(a, b)
#define JAX_MPS_REGISTER(name, platform, handler)                       \
  static ::jax_mps::Registrar JAX_MPS_CONCAT(jax_mps_reg_, __COUNTER__)( \
      name, platform, reinterpret_cast<void*>(handler))
