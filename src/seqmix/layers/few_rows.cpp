// seqmix::few_rows_linear(x, weight, bias?) = x weightᵀ (+ bias) for a few rows x [R, K] (decoding) on CPU,
// float32, streaming the weight once at close to the machine's read bandwidth. Built on first use by
// seqmix/layers/few_rows.py (the C++ compiler the ahead-of-time decode step needs anyway).
//
// Two layouts of the weight, each read as one sequential stream:
// * weightᵀ contiguous [K, N] ("rows"): y += x_k · w_k over groups of 8 weight rows, every column of y updated
//   by one fused multiply-add per weight row, in order of k; wide outputs (N > K / 2);
// * weight contiguous [N, K] ("dots"): one dot product per output over a contiguous weight row, 8 outputs at a
//   time (8 concurrent streams); narrow outputs (N ≤ K / 2), where a [K, N] row is too short to stream well.
// Threads split the output columns (rows of the "dots" layout), never the sum: every output is computed by one
// thread in the same order whatever the thread count, so results do not depend on it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SEQMIX_AVX2 1
#endif

namespace {

constexpr int64_t kGroup = 8;  // weight rows per pass over y ("rows"), outputs per pass over x ("dots")

// y[r, n0:n1] = bias + Σ_k x[r, k] wt[k, n0:n1], wt [K, N] row-major.
void rows_block(const float* x, int64_t R, const float* wt, int64_t K, int64_t N, const float* bias, float* y,
                int64_t n0, int64_t n1) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t n = n0; n < n1; ++n) y[r * N + n] = bias ? bias[n] : 0.f;
  int64_t k = 0;
  for (; k + kGroup <= K; k += kGroup) {
    const float* w = wt + k * N;
    for (int64_t r = 0; r < R; ++r) {
      const float* xr = x + r * K + k;
      float* yr = y + r * N;
      int64_t n = n0;
#ifdef SEQMIX_AVX2
      __m256 a[kGroup];
      for (int u = 0; u < kGroup; ++u) a[u] = _mm256_set1_ps(xr[u]);
      for (; n + 8 <= n1; n += 8) {
        __m256 acc = _mm256_loadu_ps(yr + n);
        for (int u = 0; u < kGroup; ++u) acc = _mm256_fmadd_ps(a[u], _mm256_loadu_ps(w + u * N + n), acc);
        _mm256_storeu_ps(yr + n, acc);
      }
#endif
      for (; n < n1; ++n) {  // the same fused multiply-adds in the same order as the vector lanes
        float acc = yr[n];
        for (int u = 0; u < kGroup; ++u) acc = std::fma(xr[u], w[u * N + n], acc);
        yr[n] = acc;
      }
    }
  }
  for (; k < K; ++k)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t n = n0; n < n1; ++n) y[r * N + n] = std::fma(x[r * K + k], wt[k * N + n], y[r * N + n]);
}

#ifdef SEQMIX_AVX2
float lane_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// y[r, n] = bias[n] + Σ_k x[r, k] w[n, k] for one output n, w row-major [N, K]: 8 lanes of partial sums over k
// (k ≡ lane mod 8), added pairwise, then the tail k ≥ K − K mod 8 in order.
float dot(const float* x, const float* w, int64_t K) {
  int64_t k = 0;
  float total = 0.f;
#ifdef SEQMIX_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (; k + 8 <= K; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(w + k), acc);
  total = lane_sum(acc);
#endif
  for (; k < K; ++k) total = std::fma(x[k], w[k], total);
  return total;
}

// outputs n0..n1 of every row, w [N, K] row-major: kGroup outputs at a time share each load of x.
void dots_block(const float* x, int64_t R, const float* w, int64_t K, int64_t N, const float* bias, float* y,
                int64_t n0, int64_t n1) {
  for (int64_t r = 0; r < R; ++r) {
    const float* xr = x + r * K;
    int64_t n = n0;
#ifdef SEQMIX_AVX2
    if (K % 8 == 0) {
      for (; n + kGroup <= n1; n += kGroup) {
        __m256 acc[kGroup];
        for (int u = 0; u < kGroup; ++u) acc[u] = _mm256_setzero_ps();
        const float* wn = w + n * K;
        for (int64_t k = 0; k < K; k += 8) {
          const __m256 xv = _mm256_loadu_ps(xr + k);
          for (int u = 0; u < kGroup; ++u) acc[u] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wn + u * K + k), acc[u]);
        }
        for (int u = 0; u < kGroup; ++u) y[r * N + n + u] = lane_sum(acc[u]) + (bias ? bias[n + u] : 0.f);
      }
    }
#endif
    for (; n < n1; ++n) y[r * N + n] = dot(xr, w + n * K, K) + (bias ? bias[n] : 0.f);
  }
}

at::Tensor few_rows_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "seqmix::few_rows_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "seqmix::few_rows_linear: float32 only, got ", x.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && x.size(-1) == weight.size(1), "seqmix::few_rows_linear: x ", x.sizes(),
              " and weight ", weight.sizes(), " do not match");
  const int64_t N = weight.size(0), K = weight.size(1);
  const bool rows = !weight.is_contiguous() && weight.t().is_contiguous();
  const at::Tensor w = rows ? weight.t() : weight.contiguous();  // [K, N] or [N, K], contiguous
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  TORCH_CHECK(!b.defined() || (b.dim() == 1 && b.size(0) == N), "seqmix::few_rows_linear: bias ",
              b.defined() ? b.sizes() : at::IntArrayRef{}, " does not match ", N, " outputs");
  const at::Tensor xs = x.reshape({-1, K}).contiguous();
  const int64_t R = xs.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor y = at::empty({R, N}, x.options());
  const float *xp = xs.data_ptr<float>(), *wp = w.data_ptr<float>(), *bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // column blocks of at least 256 outputs per thread, cut at multiples of 8
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N / 256));
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const int64_t n0 = N * i / blocks / 8 * 8, n1 = i + 1 == blocks ? N : N * (i + 1) / blocks / 8 * 8;
      (rows ? rows_block : dots_block)(xp, R, wp, K, N, bp, yp, n0, n1);
    }
  });
  return y.view(out_shape);
}

}  // namespace

TORCH_LIBRARY(seqmix, m) { m.def("few_rows_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor"); }
TORCH_LIBRARY_IMPL(seqmix, CPU, m) { m.impl("few_rows_linear", few_rows_linear); }
