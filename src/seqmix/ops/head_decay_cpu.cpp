// seqmix::head_decay_chunked(q, k, v, beta?, log_decay?, state?, scale, chunk) -> (o, S): linear attention with a
// per-head decay, chunked, forward only, on CPU, float32 or float64. Built on first use by seqmix/ops/head_decay.py.
//
//   with β (the gated delta rule):  S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ
//   without (gated linear attention with one decay per head): S_t = α_t S_{t−1} + k_t v_tᵀ
//   o_t = S_tᵀ (scale · q_t),  α_t = e^{g_t} (g = log_decay ≤ 0, None = no decay)
//
// One key head at a time (threads take whole heads, so a result does not depend on the thread count), chunk by
// chunk from the state S_0 [Dk, Dv], with G_t = Σ_{s≤t} g_s inside the chunk (summed in float64: every decay is
// exp of a difference of these sums, ≤ 0) and every chunk's work in cache:
//
//   Q Kᵀ (and K Kᵀ with β)                                   once per key head, shared by its value heads
//   [e^G Q; β e^G K] S_0 = [P_q; P_k]                        one product (P_q alone without β)
//   U = T (β V − P_k), T = (I + A)⁻¹,                        with β; A[t, s] = β_t e^{G_t−G_s} k_tᵀ k_s (s < t),
//                                                            T by forward substitution (c³/6 multiply-adds)
//   U = V                                                    without β
//   O = P_q + (Q Kᵀ ⊙ e^{G_t−G_s})_{s≤t} U                   written straight into o [B, T, H, Dv]
//   S_end = e^{G_c} S_0 + (e^{G_c−G} K)ᵀ U
//
// The products go to the BLAS torch is linked with (sgemm_/dgemm_, row-major through the column-major interface).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace {

// Row-major C[m, n] = alpha · op(A) op(B) + beta · C, op(A) [m, k], op(B) [k, n] (Cᵀ = op(B)ᵀ op(A)ᵀ column-major).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LA = static_cast<int>(ldb), LB = static_cast<int>(lda), LC = static_cast<int>(ldc);
  if constexpr (std::is_same_v<T, float>)
    sgemm_(&ta, &tb, &M, &N, &K, &alpha, b, &LA, a, &LB, &beta, c, &LC);
  else
    dgemm_(&ta, &tb, &M, &N, &K, &alpha, b, &LA, a, &LB, &beta, c, &LC);
}

template <typename T>
struct Strided {  // a [B, H, T, D] (or [B, H, T]) tensor's data and strides, D contiguous
  const T* data;
  int64_t b, h, t;
  explicit Strided(const at::Tensor& x)
      : data(x.data_ptr<T>()), b(x.stride(0)), h(x.stride(1)), t(x.stride(2)) {}
  const T* at(int64_t bi, int64_t hi, int64_t ti) const { return data + bi * b + hi * h + ti * t; }
};

template <typename T>
void run(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_, const c10::optional<at::Tensor>& beta_,
         const c10::optional<at::Tensor>& g_, at::Tensor& o, at::Tensor& S, double scale_, int64_t C) {
  const int64_t B = q_.size(0), Hk = q_.size(1), L = q_.size(2), Dk = q_.size(3), H = v_.size(1), Dv = v_.size(3);
  const int64_t group = H / Hk;
  const Strided<T> q(q_), k(k_), v(v_);
  const bool delta = beta_.has_value(), gated = g_.has_value();
  const Strided<T> beta(delta ? *beta_ : v_), g(gated ? *g_ : v_);  // (v_ stands in for what is absent)
  const T scale = static_cast<T>(scale_);
  T* out = o.data_ptr<T>();
  T* states = S.data_ptr<T>();
  at::parallel_for(0, B * Hk, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> qk(C * C), kk(C * C), inv(C * C), scores(C * C), decay(C * C), eG(C), x(2 * C * Dk),
        p(2 * C * Dv), u(C * Dv), kd(C * Dk);
    std::vector<double> G(C);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t bi = job / Hk, hk = job % Hk;
      for (int64_t t0 = 0; t0 < L; t0 += C) {
        const int64_t c = std::min(C, L - t0);
        const T* Q = q.at(bi, hk, t0);
        const T* K = k.at(bi, hk, t0);
        gemm<T>(false, true, c, c, Dk, T(1), Q, q.t, K, k.t, T(0), qk.data(), C);
        if (delta) gemm<T>(false, true, c, c, Dk, T(1), K, k.t, K, k.t, T(0), kk.data(), C);
        for (int64_t j = 0; j < group; ++j) {
          const int64_t h = hk * group + j;
          T* Sp = states + (bi * H + h) * Dk * Dv;
          const T* bt = delta ? beta.at(bi, h, t0) : nullptr;
          double acc = 0;
          T acc_t = 0;  // the delta rule sums in the input's precision, as its torch form and transformers' do
          for (int64_t t = 0; t < c; ++t) {
            if (gated) {
              const T gt = g.at(bi, h, t0)[t * g.t];
              acc = delta ? static_cast<double>(acc_t += gt) : acc + gt;
            }
            G[t] = acc;
            eG[t] = static_cast<T>(std::exp(acc));
          }
          for (int64_t t = 0; t < c; ++t) {
            const T rq = scale * eG[t];
            const T* qt = Q + t * q.t;
            T* xq = x.data() + t * Dk;
            for (int64_t d = 0; d < Dk; ++d) xq[d] = qt[d] * rq;
            if (delta) {
              const T rk = bt[t * beta.t] * eG[t];
              const T* kt = K + t * k.t;
              T* xk = x.data() + (c + t) * Dk;
              for (int64_t d = 0; d < Dk; ++d) xk[d] = kt[d] * rk;
            }
            T* dt = decay.data() + t * C;
            for (int64_t s = 0; s <= t; ++s) dt[s] = std::exp(static_cast<T>(G[t] - G[s]));
            T* st = scores.data() + t * C;
            for (int64_t s = 0; s <= t; ++s) st[s] = qk[t * C + s] * scale * dt[s];
            std::fill(st + t + 1, st + c, T(0));
          }
          gemm<T>(false, false, delta ? 2 * c : c, Dv, Dk, T(1), x.data(), Dk, Sp, Dv, T(0), p.data(), Dv);
          const T* U = v.at(bi, h, t0);  // the written values: V itself without the delta rule
          int64_t ldu = v.t;
          if (delta) {
            // T = (I + A)⁻¹ by forward substitution: row t is e_t − Σ_{r<t} A[t, r] T[r, ·]
            for (int64_t t = 0; t < c; ++t) {
              const T bet = bt[t * beta.t];
              T* it = inv.data() + t * C;
              std::fill(it, it + c, T(0));
              it[t] = T(1);
              for (int64_t r = 0; r < t; ++r) {
                const T a = bet * decay[t * C + r] * kk[t * C + r];
                const T* ir = inv.data() + r * C;
                for (int64_t s = 0; s <= r; ++s) it[s] -= a * ir[s];
              }
            }
            // U = T (β V − P_k), P_k's rows overwritten by the right-hand side
            T* rhs = p.data() + c * Dv;
            for (int64_t t = 0; t < c; ++t) {
              const T bet = bt[t * beta.t];
              const T* vt = v.at(bi, h, t0 + t);
              T* rt = rhs + t * Dv;
              for (int64_t d = 0; d < Dv; ++d) rt[d] = bet * vt[d] - rt[d];
            }
            gemm<T>(false, false, c, Dv, c, T(1), inv.data(), C, rhs, Dv, T(0), u.data(), Dv);
            U = u.data();
            ldu = Dv;
          }
          // O = P_q + scores U, written into o [B, T, H, Dv]
          T* ot = out + ((bi * L + t0) * H + h) * Dv;
          for (int64_t t = 0; t < c; ++t) std::copy(p.data() + t * Dv, p.data() + (t + 1) * Dv, ot + t * H * Dv);
          gemm<T>(false, false, c, Dv, c, T(1), scores.data(), C, U, ldu, T(1), ot, H * Dv);
          // S_end = e^{G_c} S_0 + (e^{G_c − G} K)ᵀ U
          for (int64_t t = 0; t < c; ++t) {
            const T w = std::exp(static_cast<T>(G[c - 1] - G[t]));
            const T* kt = K + t * k.t;
            T* kdt = kd.data() + t * Dk;
            for (int64_t d = 0; d < Dk; ++d) kdt[d] = kt[d] * w;
          }
          gemm<T>(true, false, Dk, Dv, c, T(1), kd.data(), Dk, U, ldu, eG[c - 1], Sp, Dv);
        }
      }
    }
  });
}

// x [B, H, T, D] as the BLAS reads it: D contiguous and rows at least D apart (a broadcast or size-one token
// dimension may have any stride), otherwise a fresh row-major copy.
at::Tensor blas_rows(const at::Tensor& x) {
  return x.stride(3) == 1 && x.stride(2) >= x.size(3) ? x : x.clone(at::MemoryFormat::Contiguous);
}

std::tuple<at::Tensor, at::Tensor> head_decay_chunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const c10::optional<at::Tensor>& beta,
                                                      const c10::optional<at::Tensor>& log_decay,
                                                      const c10::optional<at::Tensor>& state, double scale,
                                                      int64_t chunk) {
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.dim() == 4 && v.size(0) == q.size(0) &&
                  v.size(2) == q.size(2) && v.size(1) % q.size(1) == 0,
              "head_decay_chunked: q, k [B, Hk, T, Dk], v [B, H, T, Dv] with Hk dividing H");
  TORCH_CHECK(q.device().is_cpu() && (q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble),
              "head_decay_chunked: float32 or float64 tensors on the CPU");
  TORCH_CHECK(chunk > 0, "head_decay_chunked: chunk must be positive");
  const int64_t B = q.size(0), L = q.size(2), Dk = q.size(3), H = v.size(1), Dv = v.size(3);
  for (const auto& x : {k, v})
    TORCH_CHECK(x.scalar_type() == q.scalar_type() && x.device().is_cpu(), "head_decay_chunked: one dtype");
  for (const auto* x : {&beta, &log_decay})
    if (x->has_value())
      TORCH_CHECK((*x)->sizes() == at::IntArrayRef({B, H, L}) && (*x)->scalar_type() == q.scalar_type() &&
                      (*x)->device().is_cpu(),
                  "head_decay_chunked: beta and log_decay must be [B, H, T] in q's dtype");
  at::Tensor S = state ? state->clone(at::MemoryFormat::Contiguous) : q.new_zeros({B, H, Dk, Dv});
  TORCH_CHECK(S.sizes() == at::IntArrayRef({B, H, Dk, Dv}) && S.scalar_type() == q.scalar_type(),
              "head_decay_chunked: state must be [B, H, Dk, Dv] in q's dtype");
  at::Tensor o = q.new_empty({B, L, H, Dv});
  const auto q1 = blas_rows(q), k1 = blas_rows(k), v1 = blas_rows(v);
  if (q.scalar_type() == at::kFloat)
    run<float>(q1, k1, v1, beta, log_decay, o, S, scale, chunk);
  else
    run<double>(q1, k1, v1, beta, log_decay, o, S, scale, chunk);
  return {o.permute({0, 2, 1, 3}), S};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(seqmix, m) {
  m.def("head_decay_chunked(Tensor q, Tensor k, Tensor v, Tensor? beta, Tensor? log_decay, Tensor? state, "
        "float scale, int chunk) -> (Tensor, Tensor)");
  m.impl("head_decay_chunked", c10::DispatchKey::CPU, &head_decay_chunked);
}
