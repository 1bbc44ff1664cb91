// The Mamba-2 (SSD) scan forward for the CPU: the sequential recurrence of ssd_reference.py, fused.
// Forward only, fp32, no autograd (training uses the torch backend's chunked algorithm).
//
// Per head the state is one [P, N] matrix and each step is a rank-1 update with one scalar decay:
//     h = exp(Δ A) h + (Δ x) B^T;   y = h C + D x;   out = y silu(z)
// so a step is ~4 flops per state element and no exp inside the loop. The state is stored in blocks
// of PB = 16 head channels, hs[P/PB][N][PB]: each of a block's N rows is one SIMD operation over
// channels, y and ||h||^2 accumulate per channel lane in registers, and nothing is reduced across
// lanes inside the N loop.
// One task = one (batch, head): the whole state (P*N*4 bytes, 32 KiB at P=64, N=128) stays in L1/L2
// for all L steps, and the norm over P x N is finished inside the task.
//
// Layout: time-major, what the model's linear layers produce. x, z, out: [B, L, H, P] with unit
// stride along P and any batch / time / head strides; Bm, Cm: [B, L, G, N] likewise; delta [B, L, H]
// contiguous fp32 (already Δ: bias, softplus and clamp are applied in Python, a [B, L, H] pass).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

struct View4 {   // a [B, L, X, Y] view with unit stride along Y (or empty)
  const float *p = nullptr; int64_t sb = 0, sl = 0, sx = 0;
  explicit View4(const torch::Tensor &t) {
    if (t.numel()) { p = t.data_ptr<float>(); sb = t.stride(0); sl = t.stride(1); sx = t.stride(2); }
  }
  const float *at(int64_t b, int64_t l, int64_t x) const { return p + b * sb + l * sl + x * sx; }
  explicit operator bool() const { return p != nullptr; }
};

static inline float silu(float v) { return v / (1.f + std::exp(-v)); }

constexpr int64_t PB = 16;   // head channels per SIMD block: two AVX2 / one AVX-512 register of fp32

// One step for one block of PB channels: h[n] = decay h[n] + xd B[n]; y = sum_n C[n] h[n];
// sq = sum_n h[n]^2 (if NORM). hs: [N][PB]. The accumulators are PB-wide locals the compiler keeps in
// registers across the N loop (an array indexed by the full channel count was reloaded every n).
// noinline + restrict: inlined into the parallel lambda, GCC 12 stops vectorising (as in cpu_kernels.cpp)
template <bool NORM>
__attribute__((noinline)) static void step_block(int64_t N, float *__restrict hs, float decay,
                                                 const float *__restrict xd, const float *__restrict Bt,
                                                 const float *__restrict Ct, float *__restrict y,
                                                 float *__restrict sq) {
  alignas(64) float acc[PB] = {}, s[PB] = {};
  for (int64_t n = 0; n < N; ++n) {
    const float bn = Bt[n], cn = Ct[n];
    float *__restrict hn = hs + n * PB;
    #pragma omp simd
    for (int64_t j = 0; j < PB; ++j) {
      const float v = decay * hn[j] + xd[j] * bn;
      hn[j] = v; acc[j] += v * cn;
      if (NORM) s[j] += v * v;
    }
  }
  #pragma omp simd
  for (int64_t j = 0; j < PB; ++j) { y[j] = acc[j]; sq[j] = s[j]; }
}

// x, z, out: [B, L, H, P];  delta: [B, L, H] contiguous;  A: [H];  Bm, Cm: [B, L, G, N];
// Dskip: [H, P] contiguous or empty;  z empty = no gate;  h: [B, H, P, N] contiguous, initial ->
// final state;  nrm: [B, L, H] contiguous, ||h_t||_F written when non-empty.
void ssd_fwd(torch::Tensor x, torch::Tensor delta, torch::Tensor A, torch::Tensor Bm, torch::Tensor Cm,
             torch::Tensor Dskip, torch::Tensor z, torch::Tensor h, torch::Tensor out, torch::Tensor nrm) {
  const int64_t Bsz = x.size(0), L = x.size(1), H = x.size(2), P = x.size(3);
  const int64_t G = Bm.size(2), N = Bm.size(3), R = H / G;
  const int64_t nblk = (P + PB - 1) / PB, Pp = nblk * PB;   // channels padded to whole blocks
  const View4 X(x), Z(z), Bv(Bm), Cv(Cm);
  float *op = out.data_ptr<float>();
  const int64_t osb = out.stride(0), osl = out.stride(1), osh = out.stride(2);
  const float *dp = delta.data_ptr<float>(), *Ap = A.data_ptr<float>();
  const float *Dp = Dskip.numel() ? Dskip.data_ptr<float>() : nullptr;
  float *hp = h.data_ptr<float>();
  float *np_ = nrm.numel() ? nrm.data_ptr<float>() : nullptr;
  at::parallel_for(0, Bsz * H, 1, [&](int64_t begin, int64_t end) {
    // hs: [nblk][N][PB], each block's N rows contiguous; padded lanes have xd = 0, so they stay 0
    std::vector<float> hs(nblk * N * PB), xd(Pp), y(Pp), sq(Pp);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, hh = task % H, g = hh / R;
      float *h0 = hp + task * P * N;                          // [P, N] for this (b, head)
      for (int64_t p = 0; p < Pp; ++p)
        for (int64_t n = 0; n < N; ++n)
          hs[((p / PB) * N + n) * PB + p % PB] = p < P ? h0[p * N + n] : 0.f;
      const float a = Ap[hh];
      const float *Dh = Dp ? Dp + hh * P : nullptr;
      for (int64_t t = 0; t < L; ++t) {
        const float dt = dp[(b * L + t) * H + hh];
        const float decay = std::exp(dt * a);
        const float *xt = X.at(b, t, hh), *Bt = Bv.at(b, t, g), *Ct = Cv.at(b, t, g);
        for (int64_t p = 0; p < Pp; ++p) xd[p] = p < P ? dt * xt[p] : 0.f;
        for (int64_t k = 0; k < nblk; ++k) {
          float *hk = hs.data() + k * N * PB;
          if (np_) step_block<true>(N, hk, decay, xd.data() + k * PB, Bt, Ct, y.data() + k * PB, sq.data() + k * PB);
          else step_block<false>(N, hk, decay, xd.data() + k * PB, Bt, Ct, y.data() + k * PB, sq.data() + k * PB);
        }
        float *ot = op + b * osb + t * osl + hh * osh;
        const float *zt = Z ? Z.at(b, t, hh) : nullptr;
        for (int64_t p = 0; p < P; ++p) {
          const float v = y[p] + (Dh ? Dh[p] * xt[p] : 0.f);
          ot[p] = zt ? v * silu(zt[p]) : v;
        }
        if (np_) {
          float s = 0.f;
          for (int64_t p = 0; p < P; ++p) s += sq[p];
          np_[(b * L + t) * H + hh] = std::sqrt(s);
        }
      }
      for (int64_t p = 0; p < P; ++p)
        for (int64_t n = 0; n < N; ++n) h0[p * N + n] = hs[((p / PB) * N + n) * PB + p % PB];
    }
  });
}
