// The pybind11 module recipe_kernels._C: raw-pointer launchers plus host entry points that run the
// kernels' per-element logic on the CPU, so tests without a GPU can check the CUDA code's arithmetic.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "philox.cuh"

namespace py = pybind11;

namespace recipe_kernels {
// csrc/dropout.cu
void dropout(uintptr_t x, uintptr_t residual, uintptr_t bias, uintptr_t seed, uintptr_t out, int64_t n,
             int64_t bias_numel, uint32_t drop_threshold, float scale, int dtype, uintptr_t stream);
void drop_path(uintptr_t x, uintptr_t residual, uintptr_t seed, uintptr_t out, int64_t rows, int64_t row_size,
               uint32_t drop_threshold, float scale, int dtype, uintptr_t stream);
void dropout_bias_backward(uintptr_t grad, uintptr_t seed, uintptr_t grad_x, uintptr_t partial, int64_t rows,
                           int64_t columns, int64_t rows_per_block, int64_t row_blocks, uint32_t drop_threshold,
                           float scale, int dtype, uintptr_t stream);
void dropout_host(uintptr_t x, uintptr_t residual, uintptr_t bias, uintptr_t seed, uintptr_t out, int64_t n,
                  int64_t bias_numel, uint32_t drop_threshold, float scale, int dtype, int64_t blocks);
void drop_path_host(uintptr_t x, uintptr_t residual, uintptr_t seed, uintptr_t out, int64_t rows, int64_t row_size,
                    uint32_t drop_threshold, float scale, int dtype);
void dropout_bias_backward_host(uintptr_t grad, uintptr_t seed, uintptr_t grad_x, uintptr_t partial, int64_t rows,
                                int64_t columns, int64_t rows_per_block, int64_t row_blocks, uint32_t drop_threshold,
                                float scale, int dtype);
// csrc/cross_entropy.cu (declarations)
// csrc/mixing.cu (declarations)
// csrc/ema.cu (declarations)
}  // namespace recipe_kernels

namespace {

// The four words of philox4x32(seed, counter) for each counter, as an (n, 4) uint32 array.
py::array_t<uint32_t> philox4x32_host(int64_t seed, py::array_t<int64_t, py::array::c_style> counters) {
  const auto n = counters.size();
  py::array_t<uint32_t> words({static_cast<py::ssize_t>(n), py::ssize_t{4}});
  auto out = words.mutable_unchecked<2>();
  const int64_t* counter = counters.data();
  for (py::ssize_t i = 0; i < n; ++i) {
    const auto result = recipe_kernels::philox4x32(static_cast<uint64_t>(seed), static_cast<uint64_t>(counter[i]));
    for (int j = 0; j < 4; ++j) out(i, j) = result.word[j];
  }
  return words;
}

// The dropout keep decision of elements start .. start + count - 1.
py::array_t<bool> keep_mask_host(int64_t seed, int64_t start, int64_t count, uint32_t drop_threshold) {
  py::array_t<bool> keep(count);
  auto out = keep.mutable_unchecked<1>();
  for (int64_t i = 0; i < count; ++i) {
    out(i) = recipe_kernels::keep_index(static_cast<uint64_t>(seed), static_cast<uint64_t>(start + i), drop_threshold);
  }
  return keep;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "recipe_kernels CUDA kernels: raw device pointers, dtype codes and a stream handle from Python";
  m.attr("PHILOX_ROUNDS") = recipe_kernels::kPhiloxRounds;
  m.attr("KEEP_BITS") = recipe_kernels::kKeepBits;
  m.def("dropout", &recipe_kernels::dropout, "residual + (x + bias) * keep / (1 - p)", py::arg("x"),
        py::arg("residual"), py::arg("bias"), py::arg("seed"), py::arg("out"), py::arg("n"), py::arg("bias_numel"),
        py::arg("drop_threshold"), py::arg("scale"), py::arg("dtype"), py::arg("stream"));
  m.def("drop_path", &recipe_kernels::drop_path, "residual + x * keep[row] / (1 - p)", py::arg("x"),
        py::arg("residual"), py::arg("seed"), py::arg("out"), py::arg("rows"), py::arg("row_size"),
        py::arg("drop_threshold"), py::arg("scale"), py::arg("dtype"), py::arg("stream"));
  m.def("dropout_bias_backward", &recipe_kernels::dropout_bias_backward,
        "grad_x = grad * keep / (1 - p) and its per-row-block column sums", py::arg("grad"), py::arg("seed"),
        py::arg("grad_x"), py::arg("partial"), py::arg("rows"), py::arg("columns"), py::arg("rows_per_block"),
        py::arg("row_blocks"), py::arg("drop_threshold"), py::arg("scale"), py::arg("dtype"), py::arg("stream"));
  m.def("dropout_host", &recipe_kernels::dropout_host, "dropout's CUDA code run on the CPU over `blocks` blocks");
  m.def("drop_path_host", &recipe_kernels::drop_path_host, "drop_path's CUDA code run on the CPU");
  m.def("dropout_bias_backward_host", &recipe_kernels::dropout_bias_backward_host,
        "dropout_bias_backward's CUDA code run on the CPU");
  // cross_entropy (bindings)
  // mixing (bindings)
  // ema (bindings)
  m.def("philox4x32_host", &philox4x32_host, "Philox4x32 words on the CPU, from csrc/philox.cuh",
        py::arg("seed"), py::arg("counters"));
  m.def("keep_mask_host", &keep_mask_host, "dropout keep decisions on the CPU, from csrc/philox.cuh",
        py::arg("seed"), py::arg("start"), py::arg("count"), py::arg("drop_threshold"));
}
