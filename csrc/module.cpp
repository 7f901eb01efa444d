// The Python module itself: build information only. Tensors never cross pybind11 (ops go through
// TORCH_LIBRARY), so this needs no libtorch_python.
#include <pybind11/pybind11.h>
#include <ATen/Parallel.h>

#ifndef SSML_FAST_VERSION
#define SSML_FAST_VERSION "0.0.0"
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "ssml_fast compiled core (ops are registered under torch.ops.ssml_fast)";
  m.def("build_info", []() {
    py::dict info;
    info["version"] = SSML_FAST_VERSION;
#ifdef SSML_WITH_CUDA
    info["cuda"] = true;
    info["cuda_archs"] = SSML_CUDA_ARCHS;
#else
    info["cuda"] = false;
    info["cuda_archs"] = "";
#endif
#ifdef _OPENMP
    info["openmp"] = true;
#else
    info["openmp"] = false;
#endif
    info["num_threads"] = at::get_num_threads();
    info["parallel_info"] = at::get_parallel_info();
    return info;
  });
}
