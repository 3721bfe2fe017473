// The pybind11 module recipe_kernels._C: raw-pointer launchers plus host entry points that run the
// kernels' per-element logic on the CPU, so tests without a GPU can check the CUDA code's arithmetic.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "philox.cuh"

namespace py = pybind11;

namespace recipe_kernels {
// csrc/dropout.cu
void dropout(uintptr_t x, int x_dtype, uintptr_t residual, int residual_dtype, uintptr_t bias, int bias_dtype,
             uintptr_t seed, uintptr_t out, int out_dtype, int64_t n, int64_t bias_numel, uint32_t drop_threshold,
             double scale, bool fp64_math, uintptr_t stream);
void drop_path(uintptr_t x, int x_dtype, uintptr_t residual, int residual_dtype, uintptr_t seed, uintptr_t out,
               int out_dtype, int64_t rows, int64_t row_size, uint32_t drop_threshold, double scale, bool fp64_math,
               uintptr_t stream);
void dropout_bias_backward(uintptr_t grad, int grad_dtype, uintptr_t seed, uintptr_t grad_x, int grad_x_dtype,
                           uintptr_t partial, int64_t rows, int64_t columns, int64_t rows_per_block,
                           int64_t row_blocks, uint32_t drop_threshold, double scale, bool fp64_math,
                           uintptr_t stream);
void dropout_host(uintptr_t x, int x_dtype, uintptr_t residual, int residual_dtype, uintptr_t bias, int bias_dtype,
                  uintptr_t seed, uintptr_t out, int out_dtype, int64_t n, int64_t bias_numel,
                  uint32_t drop_threshold, double scale, bool fp64_math, int64_t blocks);
void drop_path_host(uintptr_t x, int x_dtype, uintptr_t residual, int residual_dtype, uintptr_t seed, uintptr_t out,
                    int out_dtype, int64_t rows, int64_t row_size, uint32_t drop_threshold, double scale,
                    bool fp64_math);
void dropout_bias_backward_host(uintptr_t grad, int grad_dtype, uintptr_t seed, uintptr_t grad_x, int grad_x_dtype,
                                uintptr_t partial, int64_t rows, int64_t columns, int64_t rows_per_block,
                                int64_t row_blocks, uint32_t drop_threshold, double scale, bool fp64_math);
// csrc/drop_path_residual.cu
void drop_path_residual_keys(uintptr_t seed, uintptr_t keys, int64_t num_samples, uintptr_t stream);
void drop_path_residual_rows(uintptr_t a, uintptr_t b, uintptr_t index, uintptr_t out, int64_t rows,
                             int64_t row_size, float scale, int a_dtype, int b_dtype, int out_dtype,
                             uintptr_t stream);
void drop_path_residual_keys_host(uintptr_t seed, uintptr_t keys, int64_t num_samples);
void drop_path_residual_rows_host(uintptr_t a, uintptr_t b, uintptr_t index, uintptr_t out, int64_t rows,
                                  int64_t row_size, float scale, int a_dtype, int b_dtype, int out_dtype);
// csrc/cross_entropy.cu
void cross_entropy_fwd(uintptr_t x, uintptr_t target, uintptr_t target_b, uintptr_t lam, uintptr_t weight,
                       uintptr_t denominator, uintptr_t grad_output, uintptr_t loss, uintptr_t lse, uintptr_t grad,
                       uintptr_t partial, int64_t rows, int64_t num_classes, int64_t inner_size, int64_t splits,
                       int64_t num_partials, int64_t rows_per_partial, int64_t ignore_index, float label_smoothing,
                       float z_loss, bool mean,
                       int grad_output_kind, bool grad_of_target, int kind, int dtype, uintptr_t stream);
void cross_entropy_scale_grad(uintptr_t grad, uintptr_t factor, int64_t n, int64_t num_classes, int64_t inner_size,
                              bool per_row, int64_t max_blocks, int dtype, uintptr_t stream);
void cross_entropy_scale_grad_host(uintptr_t grad, uintptr_t factor, int64_t n, int64_t num_classes,
                                   int64_t inner_size, bool per_row, int64_t max_blocks, int dtype);
void cross_entropy_host(const float* x, const int64_t* target, const int64_t* target_b, const float* lam,
                        const float* weight, const float* q, int64_t rows, int64_t num_classes, int64_t ignore_index,
                        float label_smoothing, float z_loss, int kind, int64_t chunk, bool of_target, float* loss,
                        float* grad);
// csrc/mixing.cu (declarations)
void composite_batch(uintptr_t x, uintptr_t out, uintptr_t box, uintptr_t lam, uintptr_t partner, uintptr_t mode,
                     uintptr_t fill, uintptr_t mean, uintptr_t std_dev, uintptr_t seed, int64_t n, int64_t c,
                     int64_t h, int64_t w, bool channels_last, bool visit_flip_pairs, int in_dtype, int out_dtype,
                     uintptr_t stream);
void cutmix_swap(uintptr_t x, uintptr_t box, int64_t n, int64_t c, int64_t h, int64_t w, bool channels_last,
                 int dtype, uintptr_t stream);
void composite_values_host(uintptr_t own, uintptr_t other, uintptr_t inside, uintptr_t out, int64_t count, int mode,
                           float lam, float fill, bool round_uint8);
void erase_noise_host(int64_t seed, uintptr_t index, uintptr_t out, int64_t count);
void composite_batch_host(uintptr_t x, uintptr_t out, uintptr_t box, uintptr_t lam, uintptr_t partner, uintptr_t mode,
                          uintptr_t fill, uintptr_t mean, uintptr_t std_dev, uintptr_t seed, int64_t n, int64_t c,
                          int64_t h, int64_t w, bool channels_last, bool visit_flip_pairs, int in_dtype,
                          int out_dtype);
void cutmix_swap_host(uintptr_t x, uintptr_t box, int64_t n, int64_t c, int64_t h, int64_t w, bool channels_last,
                      int dtype);
// csrc/ema.cu (declarations)
void ema_update(uintptr_t table, int64_t num_chunks, uintptr_t decays, int64_t chunk, int threads, uintptr_t stream);
void ema_scheduled_update(uintptr_t table, int64_t num_chunks, uintptr_t num_updates, uintptr_t programs_done,
                          uintptr_t decays, double decay, bool warmup, double warmup_gamma, double warmup_power,
                          double min_decay, int64_t update_after_step, int64_t update_every, int64_t chunk, int threads,
                          uintptr_t stream);
void ema_blend_host(const float* ema, const float* param, float* out, int64_t n, float decay);
void ema_decays_host(int64_t t, double decay, bool warmup, double warmup_gamma, double warmup_power,
                     double min_decay, int64_t update_after_step, int64_t update_every, double* out);
void ema_update_host(uintptr_t table, int64_t num_chunks, uintptr_t decays, int64_t chunk, int threads);
void ema_scheduled_update_host(uintptr_t table, int64_t num_chunks, uintptr_t num_updates, uintptr_t programs_done,
                               uintptr_t decays, double decay, bool warmup, double warmup_gamma, double warmup_power,
                               double min_decay, int64_t update_after_step, int64_t update_every, int64_t chunk,
                               int threads);
// csrc/augment.cu (declarations)
void resized_crop(uintptr_t table, uintptr_t crop, uintptr_t flip, uintptr_t mean, uintptr_t std_dev, uintptr_t out,
                  int64_t n, int64_t c, int64_t out_height, int64_t out_width, bool channels_last, bool antialias,
                  int in_dtype, int out_dtype, uintptr_t stream);
void batch_augment(uintptr_t table, uintptr_t crop, uintptr_t flip, uintptr_t mix_box, uintptr_t lam,
                   uintptr_t partner, uintptr_t mode, uintptr_t erase_box, uintptr_t erase, uintptr_t fill,
                   uintptr_t mean, uintptr_t std_dev, uintptr_t out, int64_t n, int64_t c, int64_t out_height,
                   int64_t out_width, bool channels_last, bool antialias, int in_dtype, int out_dtype,
                   uintptr_t stream);
void resized_crop_host(uintptr_t table, uintptr_t crop, uintptr_t flip, uintptr_t mean, uintptr_t std_dev,
                       uintptr_t out, int64_t n, int64_t c, int64_t out_height, int64_t out_width,
                       bool channels_last, bool antialias, int in_dtype, int out_dtype);
void batch_augment_host(uintptr_t table, uintptr_t crop, uintptr_t flip, uintptr_t mix_box, uintptr_t lam,
                        uintptr_t partner, uintptr_t mode, uintptr_t erase_box, uintptr_t erase, uintptr_t fill,
                        uintptr_t mean, uintptr_t std_dev, uintptr_t out, int64_t n, int64_t c, int64_t out_height,
                        int64_t out_width, bool channels_last, bool antialias, int in_dtype, int out_dtype);
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
  // Each tensor comes with its own dtype code (mixed-dtype inputs); fp64_math runs the arithmetic in double.
  m.def("dropout", &recipe_kernels::dropout, "residual + (x + bias) * keep / (1 - p)", py::arg("x"),
        py::arg("x_dtype"), py::arg("residual"), py::arg("residual_dtype"), py::arg("bias"), py::arg("bias_dtype"),
        py::arg("seed"), py::arg("out"), py::arg("out_dtype"), py::arg("n"), py::arg("bias_numel"),
        py::arg("drop_threshold"), py::arg("scale"), py::arg("fp64_math"), py::arg("stream"));
  m.def("drop_path", &recipe_kernels::drop_path, "residual + x * keep[row] / (1 - p)", py::arg("x"),
        py::arg("x_dtype"), py::arg("residual"), py::arg("residual_dtype"), py::arg("seed"), py::arg("out"),
        py::arg("out_dtype"), py::arg("rows"), py::arg("row_size"), py::arg("drop_threshold"), py::arg("scale"),
        py::arg("fp64_math"), py::arg("stream"));
  m.def("dropout_bias_backward", &recipe_kernels::dropout_bias_backward,
        "grad_x = grad * keep / (1 - p) and its per-row-block column sums", py::arg("grad"), py::arg("grad_dtype"),
        py::arg("seed"), py::arg("grad_x"), py::arg("grad_x_dtype"), py::arg("partial"), py::arg("rows"),
        py::arg("columns"), py::arg("rows_per_block"), py::arg("row_blocks"), py::arg("drop_threshold"),
        py::arg("scale"), py::arg("fp64_math"), py::arg("stream"));
  m.def("dropout_host", &recipe_kernels::dropout_host, "dropout's CUDA code run on the CPU over `blocks` blocks",
        py::arg("x"), py::arg("x_dtype"), py::arg("residual"), py::arg("residual_dtype"), py::arg("bias"),
        py::arg("bias_dtype"), py::arg("seed"), py::arg("out"), py::arg("out_dtype"), py::arg("n"),
        py::arg("bias_numel"), py::arg("drop_threshold"), py::arg("scale"), py::arg("fp64_math"), py::arg("blocks"));
  m.def("drop_path_host", &recipe_kernels::drop_path_host, "drop_path's CUDA code run on the CPU", py::arg("x"),
        py::arg("x_dtype"), py::arg("residual"), py::arg("residual_dtype"), py::arg("seed"), py::arg("out"),
        py::arg("out_dtype"), py::arg("rows"), py::arg("row_size"), py::arg("drop_threshold"), py::arg("scale"),
        py::arg("fp64_math"));
  m.def("dropout_bias_backward_host", &recipe_kernels::dropout_bias_backward_host,
        "dropout_bias_backward's CUDA code run on the CPU", py::arg("grad"), py::arg("grad_dtype"), py::arg("seed"),
        py::arg("grad_x"), py::arg("grad_x_dtype"), py::arg("partial"), py::arg("rows"), py::arg("columns"),
        py::arg("rows_per_block"), py::arg("row_blocks"), py::arg("drop_threshold"), py::arg("scale"),
        py::arg("fp64_math"));
  // drop_path_residual (bindings)
  m.def("drop_path_residual_keys", &recipe_kernels::drop_path_residual_keys,
        "subset sort keys (word - 2^31) * 2^32 + n, one Philox word per sample", py::arg("seed"), py::arg("keys"),
        py::arg("num_samples"), py::arg("stream"));
  m.def("drop_path_residual_rows", &recipe_kernels::drop_path_residual_rows,
        "out[r] = a[r] + scale * b[index[r]] (a[r] where index[r] < 0; without a, scale * b[index[r]])",
        py::arg("a"), py::arg("b"), py::arg("index"), py::arg("out"), py::arg("rows"), py::arg("row_size"),
        py::arg("scale"), py::arg("a_dtype"), py::arg("b_dtype"), py::arg("out_dtype"), py::arg("stream"));
  m.def("drop_path_residual_keys_host", &recipe_kernels::drop_path_residual_keys_host,
        "drop_path_residual_keys' CUDA code run on the CPU over its whole grid (CPU pointers)", py::arg("seed"),
        py::arg("keys"), py::arg("num_samples"));
  m.def("drop_path_residual_rows_host", &recipe_kernels::drop_path_residual_rows_host,
        "drop_path_residual_rows' CUDA code run on the CPU over its whole grid (CPU pointers)", py::arg("a"),
        py::arg("b"), py::arg("index"), py::arg("out"), py::arg("rows"), py::arg("row_size"), py::arg("scale"),
        py::arg("a_dtype"), py::arg("b_dtype"), py::arg("out_dtype"));
  m.def("cross_entropy_fwd", &recipe_kernels::cross_entropy_fwd,
        "cross-entropy loss per row and, when grad != 0, its gradient (one pass over the logits)", py::arg("x"),
        py::arg("target"), py::arg("target_b"), py::arg("lam"), py::arg("weight"), py::arg("denominator"),
        py::arg("grad_output"), py::arg("loss"), py::arg("lse"), py::arg("grad"), py::arg("partial"), py::arg("rows"),
        py::arg("num_classes"), py::arg("inner_size"), py::arg("splits"), py::arg("num_partials"),
        py::arg("rows_per_partial"), py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("z_loss"),
        py::arg("mean"),
        py::arg("grad_output_kind"), py::arg("grad_of_target"), py::arg("kind"), py::arg("dtype"), py::arg("stream"));
  m.def("cross_entropy_scale_grad", &recipe_kernels::cross_entropy_scale_grad,
        "grad *= factor in place (scalar or per row), skipping factors of exactly 1", py::arg("grad"),
        py::arg("factor"), py::arg("n"), py::arg("num_classes"), py::arg("inner_size"), py::arg("per_row"),
        py::arg("max_blocks"), py::arg("dtype"), py::arg("stream"));
  m.def("cross_entropy_scale_grad_host", &recipe_kernels::cross_entropy_scale_grad_host,
        "cross_entropy_scale_grad's CUDA code run on the CPU over every thread of its grid (CPU pointers)",
        py::arg("grad"), py::arg("factor"), py::arg("n"), py::arg("num_classes"), py::arg("inner_size"),
        py::arg("per_row"), py::arg("max_blocks"), py::arg("dtype"));
  // The CUDA kernels' per-row arithmetic on the CPU (fp32 (rows, C) logits), for tests without a GPU.
  // Empty arrays stand for absent inputs; returns (loss (rows,), gradient (rows, C)) for grad_scale 1,
  // with respect to the logits or (of_target) to the probability target.
  m.def(
      "cross_entropy_host",
      [](py::array_t<float, py::array::c_style> x, py::array_t<int64_t, py::array::c_style> target,
         py::array_t<int64_t, py::array::c_style> target_b, py::array_t<float, py::array::c_style> lam,
         py::array_t<float, py::array::c_style> weight, py::array_t<float, py::array::c_style> q, int64_t ignore_index,
         float label_smoothing, int kind, int64_t chunk, bool of_target, float z_loss) {
        const int64_t rows = x.shape(0), num_classes = x.shape(1);
        py::array_t<float> loss(rows);
        py::array_t<float> grad({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(num_classes)});
        auto data = [](auto& array) { return array.size() > 0 ? array.data() : nullptr; };
        recipe_kernels::cross_entropy_host(x.data(), data(target), data(target_b), data(lam), data(weight), data(q),
                                           rows, num_classes, ignore_index, label_smoothing, z_loss, kind, chunk,
                                           of_target,
                                           loss.mutable_data(), grad.mutable_data());
        return py::make_tuple(loss, grad);
      },
      py::arg("x"), py::arg("target"), py::arg("target_b"), py::arg("lam"), py::arg("weight"), py::arg("q"),
      py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("kind"), py::arg("chunk"),
      py::arg("of_target") = false, py::arg("z_loss") = 0.f);
  // mixing (bindings)
  m.def("composite_batch", &recipe_kernels::composite_batch, "CutMix / MixUp / erase per sample, optional normalization",
        py::arg("x"), py::arg("out"), py::arg("box"), py::arg("lam"), py::arg("partner"), py::arg("mode"),
        py::arg("fill"), py::arg("mean"), py::arg("std"), py::arg("seed"), py::arg("n"), py::arg("c"), py::arg("h"),
        py::arg("w"), py::arg("channels_last"), py::arg("visit_flip_pairs"), py::arg("in_dtype"),
        py::arg("out_dtype"), py::arg("stream"));
  m.def("cutmix_swap", &recipe_kernels::cutmix_swap, "in place: samples i and N-1-i swap their box", py::arg("x"),
        py::arg("box"), py::arg("n"), py::arg("c"), py::arg("h"), py::arg("w"), py::arg("channels_last"),
        py::arg("dtype"), py::arg("stream"));
  m.def("composite_values_host", &recipe_kernels::composite_values_host,
        "composite_batch's per-element arithmetic on CPU float32 buffers, from csrc/mixing.cu", py::arg("own"),
        py::arg("other"), py::arg("inside"), py::arg("out"), py::arg("count"), py::arg("mode"), py::arg("lam"),
        py::arg("fill"), py::arg("round_uint8"));
  m.def("erase_noise_host", &recipe_kernels::erase_noise_host,
        "random-erasing normal noise on the CPU (int64 indices in, float32 out), from csrc/mixing.cu",
        py::arg("seed"), py::arg("index"), py::arg("out"), py::arg("count"));
  m.def("composite_batch_host", &recipe_kernels::composite_batch_host,
        "composite_batch's CUDA code run on the CPU over the launcher's whole grid (CPU pointers)", py::arg("x"),
        py::arg("out"), py::arg("box"), py::arg("lam"), py::arg("partner"), py::arg("mode"), py::arg("fill"),
        py::arg("mean"), py::arg("std"), py::arg("seed"), py::arg("n"), py::arg("c"), py::arg("h"), py::arg("w"),
        py::arg("channels_last"), py::arg("visit_flip_pairs"), py::arg("in_dtype"), py::arg("out_dtype"));
  m.def("cutmix_swap_host", &recipe_kernels::cutmix_swap_host,
        "cutmix_swap's CUDA code run on the CPU over the launcher's whole grid (CPU pointers)", py::arg("x"),
        py::arg("box"), py::arg("n"), py::arg("c"), py::arg("h"), py::arg("w"), py::arg("channels_last"),
        py::arg("dtype"));
  // ema (bindings)
  m.def("ema_update", &recipe_kernels::ema_update, "e <- lerp(e, p, 1 - d) over every row of a chunk table",
        py::arg("table"), py::arg("num_chunks"), py::arg("decays"), py::arg("chunk"), py::arg("threads"),
        py::arg("stream"));
  m.def("ema_scheduled_update", &recipe_kernels::ema_scheduled_update,
        "ModelEMA's update in one launch: the decays of t = num_updates + 1, the update, num_updates = t",
        py::arg("table"), py::arg("num_chunks"), py::arg("num_updates"), py::arg("programs_done"), py::arg("decays"),
        py::arg("decay"), py::arg("warmup"), py::arg("warmup_gamma"), py::arg("warmup_power"), py::arg("min_decay"),
        py::arg("update_after_step"), py::arg("update_every"), py::arg("chunk"), py::arg("threads"),
        py::arg("stream"));
  m.def(
      "ema_blend_host",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> ema,
         py::array_t<float, py::array::c_style | py::array::forcecast> param, float decay) {
        if (ema.size() != param.size()) throw std::invalid_argument("ema_blend_host: sizes differ");
        py::array_t<float> out(ema.size());
        recipe_kernels::ema_blend_host(ema.data(), param.data(), out.mutable_data(), ema.size(), decay);
        return out;
      },
      "the EMA kernel's fp32 blend on the CPU, from csrc/ema.cu", py::arg("ema"), py::arg("param"), py::arg("decay"));
  m.def(
      "ema_decays_host",
      [](int64_t t, double decay, bool warmup, double warmup_gamma, double warmup_power, double min_decay,
         int64_t update_after_step, int64_t update_every) {
        double out[2];
        recipe_kernels::ema_decays_host(t, decay, warmup, warmup_gamma, warmup_power, min_decay, update_after_step,
                                        update_every, out);
        return py::make_tuple(out[0], out[1]);
      },
      "ModelEMA's (average, copy) decays of update t on the CPU, from csrc/ema.cu", py::arg("t"), py::arg("decay"),
      py::arg("warmup"), py::arg("warmup_gamma"), py::arg("warmup_power"), py::arg("min_decay"),
      py::arg("update_after_step"), py::arg("update_every"));
  m.def("ema_update_host", &recipe_kernels::ema_update_host,
        "ema_update's CUDA code run on the CPU over every block and thread of its grid (CPU addresses)",
        py::arg("table"), py::arg("num_chunks"), py::arg("decays"), py::arg("chunk"), py::arg("threads"));
  m.def("ema_scheduled_update_host", &recipe_kernels::ema_scheduled_update_host,
        "ema_scheduled_update's CUDA code run on the CPU over every block and thread of its grid (CPU addresses)",
        py::arg("table"), py::arg("num_chunks"), py::arg("num_updates"), py::arg("programs_done"), py::arg("decays"),
        py::arg("decay"), py::arg("warmup"), py::arg("warmup_gamma"), py::arg("warmup_power"), py::arg("min_decay"),
        py::arg("update_after_step"), py::arg("update_every"), py::arg("chunk"), py::arg("threads"));
  // augment (bindings)
  m.def("resized_crop", &recipe_kernels::resized_crop,
        "per sample: crop, resize (bilinear, antialias), flip, normalise, cast; one launch", py::arg("table"),
        py::arg("crop"), py::arg("flip"), py::arg("mean"), py::arg("std"), py::arg("out"), py::arg("n"), py::arg("c"),
        py::arg("out_height"), py::arg("out_width"), py::arg("channels_last"), py::arg("antialias"),
        py::arg("in_dtype"), py::arg("out_dtype"), py::arg("stream"));
  m.def("batch_augment", &recipe_kernels::batch_augment,
        "resized_crop, then MixUp/CutMix with the partner's crop, erasing, normalisation and the cast; one launch",
        py::arg("table"), py::arg("crop"), py::arg("flip"), py::arg("mix_box"), py::arg("lam"), py::arg("partner"),
        py::arg("mode"), py::arg("erase_box"), py::arg("erase"), py::arg("fill"), py::arg("mean"), py::arg("std"),
        py::arg("out"), py::arg("n"), py::arg("c"), py::arg("out_height"), py::arg("out_width"),
        py::arg("channels_last"), py::arg("antialias"), py::arg("in_dtype"), py::arg("out_dtype"), py::arg("stream"));
  m.def("resized_crop_host", &recipe_kernels::resized_crop_host,
        "resized_crop's CUDA code run on the CPU over the launcher's whole grid (CPU pointers and table)",
        py::arg("table"), py::arg("crop"), py::arg("flip"), py::arg("mean"), py::arg("std"), py::arg("out"),
        py::arg("n"), py::arg("c"), py::arg("out_height"), py::arg("out_width"), py::arg("channels_last"),
        py::arg("antialias"), py::arg("in_dtype"), py::arg("out_dtype"));
  m.def("batch_augment_host", &recipe_kernels::batch_augment_host,
        "batch_augment's CUDA code run on the CPU over the launcher's whole grid (CPU pointers and table)",
        py::arg("table"), py::arg("crop"), py::arg("flip"), py::arg("mix_box"), py::arg("lam"), py::arg("partner"),
        py::arg("mode"), py::arg("erase_box"), py::arg("erase"), py::arg("fill"), py::arg("mean"), py::arg("std"),
        py::arg("out"), py::arg("n"), py::arg("c"), py::arg("out_height"), py::arg("out_width"),
        py::arg("channels_last"), py::arg("antialias"), py::arg("in_dtype"), py::arg("out_dtype"));
  m.def("philox4x32_host", &philox4x32_host, "Philox4x32 words on the CPU, from csrc/philox.cuh",
        py::arg("seed"), py::arg("counters"));
  m.def("keep_mask_host", &keep_mask_host, "dropout keep decisions on the CPU, from csrc/philox.cuh",
        py::arg("seed"), py::arg("start"), py::arg("count"), py::arg("drop_threshold"));
}
