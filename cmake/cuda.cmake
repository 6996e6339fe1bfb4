# The CUDA half: the extension module _jax_mps_cuda (csrc/cuda/), included from CMakeLists.txt
# when JAX_MPS_CUDA is AUTO or ON.
#
# Toolkit: nvcc from the system (/usr/local/cuda, PATH) or from the nvidia-cuda-nvcc wheel (pass
# -DCMAKE_CUDA_COMPILER=.../nvidia/cu13/bin/nvcc). cuDNN and cuBLAS(Lt) come from the PyPI wheels
# (nvidia-cudnn-cu13, nvidia-cublas) found by tools/find_nvidia.py: the cuDNN that jax's CUDA
# plugin loads, so one process never holds two cuDNNs. The wheels ship only versioned shared
# objects (libcudnn.so.9, libcublasLt.so.13), which we link by full path. cudart is linked
# statically (works across CUDA 13 drivers, nothing more to find at run time).
include(CheckLanguage)
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "80;90")  # A100, H100/H200; never "native" (needs a GPU to build)
endif()
check_language(CUDA)
execute_process(COMMAND "${Python_EXECUTABLE}" "${CMAKE_CURRENT_SOURCE_DIR}/tools/find_nvidia.py"
                OUTPUT_VARIABLE _jax_mps_nv OUTPUT_STRIP_TRAILING_WHITESPACE)
set(_jax_mps_why "")
if(NOT CMAKE_CUDA_COMPILER)
  set(_jax_mps_why "no CUDA compiler found (put nvcc on PATH or set CMAKE_CUDA_COMPILER)")
elseif(NOT _jax_mps_nv)
  set(_jax_mps_why "cuDNN/cuBLAS headers not found (pip install nvidia-cudnn-cu13 nvidia-cublas, or set JAX_MPS_NVIDIA_ROOT; see tools/build_cuda.sh)")
endif()
if(_jax_mps_why)
  if(JAX_MPS_CUDA STREQUAL "ON")
    message(FATAL_ERROR "JAX_MPS_CUDA=ON: ${_jax_mps_why}")
  endif()
  message(STATUS "JAX_MPS_CUDA=AUTO: the CUDA backend is not built: ${_jax_mps_why}")
  return()
endif()

enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
list(GET _jax_mps_nv 0 CUDNN_INCLUDE_DIR)
list(GET _jax_mps_nv 1 CUDNN_LIB_DIR)
list(GET _jax_mps_nv 2 CU13_INCLUDE_DIR)
list(GET _jax_mps_nv 3 CU13_LIB_DIR)
find_library(CUDNN_LIBRARY NAMES libcudnn.so.9 cudnn PATHS "${CUDNN_LIB_DIR}" NO_DEFAULT_PATH REQUIRED)
find_library(CUBLAS_LIBRARY NAMES libcublas.so.13 cublas PATHS "${CU13_LIB_DIR}" NO_DEFAULT_PATH REQUIRED)
find_library(CUBLASLT_LIBRARY NAMES libcublasLt.so.13 cublasLt PATHS "${CU13_LIB_DIR}" NO_DEFAULT_PATH REQUIRED)
message(STATUS "jax_mps CUDA backend: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, archs ${CMAKE_CUDA_ARCHITECTURES}, "
               "cuDNN ${CUDNN_LIBRARY}, cuBLASLt ${CUBLASLT_LIBRARY}")

# The backend's kernels and library calls (struct Cuda, nvcc) in a static library; the nanobind
# module (host compiler) instantiates the runtime's handlers for Cuda in one explicit table
# (csrc/cuda/targets.cc), so no handler can be dropped by the linker.
file(GLOB JAX_MPS_CUDA_SOURCES CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cu")
add_library(jax_mps_cuda_kernels STATIC ${JAX_MPS_CUDA_SOURCES})
set_target_properties(jax_mps_cuda_kernels PROPERTIES CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON
                      POSITION_INDEPENDENT_CODE ON CUDA_VISIBILITY_PRESET hidden)
target_include_directories(jax_mps_cuda_kernels PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}/csrc")
target_include_directories(jax_mps_cuda_kernels SYSTEM PRIVATE "${XLA_FFI_INCLUDE}" "${CUDNN_INCLUDE_DIR}"
                           "${CU13_INCLUDE_DIR}")
target_compile_options(jax_mps_cuda_kernels PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr
                       -Xcompiler=-Wall -Xcompiler=-Wno-unused-function>)
target_link_libraries(jax_mps_cuda_kernels PUBLIC CUDA::cudart_static "${CUDNN_LIBRARY}" "${CUBLASLT_LIBRARY}"
                      "${CUBLAS_LIBRARY}")

nanobind_add_module(_jax_mps_cuda NB_STATIC "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/module.cc"
                    "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/targets.cc")
target_include_directories(_jax_mps_cuda PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}/csrc")
target_include_directories(_jax_mps_cuda SYSTEM PRIVATE "${XLA_FFI_INCLUDE}" "${CUDNN_INCLUDE_DIR}"
                           "${CU13_INCLUDE_DIR}")
target_link_libraries(_jax_mps_cuda PRIVATE jax_mps_cuda_kernels)
# Installed at the site-packages top level: the wheels' libraries are then in ./nvidia/...
set_target_properties(_jax_mps_cuda PROPERTIES
  INSTALL_RPATH "$ORIGIN/nvidia/cudnn/lib;$ORIGIN/nvidia/cu13/lib"
  BUILD_WITH_INSTALL_RPATH OFF)
