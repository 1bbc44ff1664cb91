// The Mamba-2 (SSD) scan forward for the CPU: the sequential recurrence of ssd_reference.py, fused.
// Forward only, fp32, no autograd (training uses the torch backend's chunked algorithm).
//
// Per head the state is one [P, N] matrix and each step is a rank-1 update with one scalar decay:
//     Δ = clamp(softplus(dt + dt_bias));  h = exp(Δ A) h + (Δ x) B^T;  y = h C + D x;  out = y silu(z)
// The exp is one scalar per (head, step), so the work is the update and the C contraction: 3 vector
// operations per state element (a multiply and two FMAs; 4 with the state norm), no exp inside.
//
// State layout: blocks of W = 16 head channels, hs[P/W][N][W]. Each of a block's N rows is one
// 16-wide vector over channels, so y and ||h||^2 accumulate per channel lane in registers and
// nothing is reduced across lanes inside the N loop (SIMD over n instead would need P horizontal
// sums per step); the same idea as cpu_kernels.cpp's [N][16 channels] Mamba-1 state.
// Vectors are GCC vector extensions of the hardware width VL (16 floats with AVX-512, 8 with AVX2,
// as the portable build, 4 elsewhere), K = 16 / VL of them per row; no intrinsics, one code path.
//
// One task = one (batch, head), split over threads by at::parallel_for (built with -fopenmp).
// Time runs in blocks of TB steps, each through all of a thread's tasks (so the block's input
// rows, which a batch's heads share, are fetched once: 20% faster on the model's views than one
// head's whole sequence at a time): Δ and exp(Δ A) for the block first, VL steps per vector
// operation; then each 16-channel block of the head's state (N * 64 bytes, 8 KiB at N = 128)
// stays in L1 while it runs through the TB steps, two steps per pass (a row is loaded and stored
// once per two steps). Measured on a Zen 3 core (AVX2): 0.23-0.26 cycles per state element and
// step at N = 128, where the FMA ports allow 0.19; ~57 cycles per step for a 16 x 16 head.
//
// Layout: time-major, what the model's linear layers produce; views are read in place.
//   x, z: [B, L, H, P], out: [B, L, H, P]; Bm, Cm: [B, L, G, N]: unit stride along the last dim,
//   any other strides;  dt [B, L, H]: any strides (a slice of in_proj's output).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

constexpr int64_t W = 16;    // head channels per state block
constexpr int64_t TB = 128;  // time steps per block (Δ, decay and norm buffers: TB * 72 bytes)
// one hardware vector: GCC splits wider vector-extension types poorly (through the stack), so a
// 16-channel block is K native vectors, in small arrays the compiler keeps in registers
#if defined(__AVX512F__)
constexpr int64_t VL = 16;
#elif defined(__AVX__)
constexpr int64_t VL = 8;
#else
constexpr int64_t VL = 4;
#endif
constexpr int64_t K = W / VL;
static_assert(TB % VL == 0 && W % VL == 0, "blocks are whole vectors");

typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));
#define INLINE static inline __attribute__((always_inline))

INLINE vf load(const float *p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
INLINE void store(float *p, vf v) { std::memcpy(p, &v, sizeof v); }
// a broadcast. Not vf{} + s: without -ffast-math that is an addition (-0.f + 0.f is +0.f), and a
// loop over the lanes goes through the stack; s - 0.f is s for every s, so it folds away.
INLINE vf splat(float s) { return s - vf{}; }
INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }
INLINE vf vmin(vf a, vf b) { return a < b ? a : b; }
INLINE vf vabs(vf a) { return (vf)((vi)a & 0x7fffffff); }

// exp(x), Cephes expf's range reduction and polynomial (~1 ulp, as cpu_kernels.cpp's exp_neg), for
// x <= 88 (callers clamp); below -87 (where 2^k leaves the normal range) it returns 0.
// round(x log2 e) by the 1.5 * 2^23 trick: vector extensions have no floor.
INLINE vf vexp(vf x) {
  const vf xc = vmax(x, splat(-87.f));
  const vf kf = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const vf r = (xc - kf * 0.693359375f) + kf * 2.12194440e-4f;
  vf p = splat(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f; p = p * r + 8.3334519073E-3f; p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f; p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  const vi e = (__builtin_convertvector(kf, vi) + 127) << 23;
  return x < -87.f ? splat(0.f) : p * (vf)e;
}
// softplus(x) = max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1]; log1p(e) = 2 atanh(s), s = e / (2 + e)
// <= 1/3, summed to s^13 (cpu_kernels.cpp's; equals torch's softplus, threshold 20, in fp32)
INLINE vf vsoftplus(vf x) {
  const vf e = vexp(-vabs(x));
  const vf s = e / (2.f + e), s2 = s * s;
  vf p = splat(1.f / 13); p = p * s2 + 1.f / 11; p = p * s2 + 1.f / 9; p = p * s2 + 1.f / 7;
  p = p * s2 + 1.f / 5; p = p * s2 + 1.f / 3; p = p * s2 + 1.f;
  return vmax(x, splat(0.f)) + 2.f * s * p;
}
// x sigmoid(x) without exp of a positive number
INLINE vf vsilu(vf x) {
  const vf e = vexp(-vabs(x));
  return x * ((x >= 0.f ? splat(1.f) : e) / (1.f + e));
}

struct View {   // [B, L, X, ...] fp32, any strides (a unit stride along the dim after X is the caller's)
  float *p = nullptr; int64_t sb = 0, sl = 0, sx = 0;
  explicit View(const torch::Tensor &t) {
    if (t.numel()) { p = t.data_ptr<float>(); sb = t.stride(0); sl = t.stride(1); sx = t.stride(2); }
  }
  float *at(int64_t b, int64_t l, int64_t x) const { return p + b * sb + l * sl + x * sx; }
  explicit operator bool() const { return p != nullptr; }
};

// S consecutive steps of one 16-channel block in one pass over its N rows (hs: [N][W]): for each
// row n, h = a_s h + xd_s B_s[n], y_s += C_s[n] h, sq_s += h^2 (NORM) for s = 0..S-1, so a row is
// loaded and stored once per S steps. S = 2: one pass then has 6 (8 with NORM) independent vector
// multiply-adds per row and channel vector, enough to run at the FMA throughput with one
// accumulator chain per step, within AVX2's 16 registers.
template <int S, bool NORM>
INLINE void steps(int64_t N, float *__restrict hs, const float *a, const vf (&xd)[S][K],
                  const float *const (&Bt)[S], const float *const (&Ct)[S], vf (&y)[S][K], vf (&sq)[S][K]) {
  for (int s = 0; s < S; ++s)
    for (int64_t i = 0; i < K; ++i) y[s][i] = vf{};
  for (int64_t n = 0; n < N; ++n) {
    float *r = hs + n * W;
    for (int64_t i = 0; i < K; ++i) {
      vf h = load(r + i * VL);
      for (int s = 0; s < S; ++s) {
        h = h * a[s] + xd[s][i] * Bt[s][n];
        y[s][i] += h * Ct[s][n];
        if (NORM) sq[s][i] += h * h;
      }
      store(r + i * VL, h);
    }
  }
}

// Where one 16-channel block's rows are for TB (or fewer) steps: pointers at step 0, time strides.
struct BlockIO {
  const float *x, *z, *B, *C; float *out;   // z = nullptr: no gate
  int64_t xs, zs, bs, cs, os;
};

// Steps t..t+S-1 of one 16-channel block: out = (y + D x) silu(z) (GATE); sq[t]: [W], the per-lane
// sum of h^2, accumulated over the head's blocks (NORM). FULL: all 16 channels are real; else the
// nk < 16 real ones are copied through a zero-padded buffer (the padded lanes' x is 0, so their
// state stays 0).
template <int S, bool NORM, bool GATE, bool FULL>
INLINE void block_steps(int64_t N, int64_t t, int64_t nk, float *__restrict hs, const float *__restrict delta,
                        const float *__restrict decay, const vf (&D)[K], const BlockIO &io, float *__restrict sq) {
  alignas(64) float buf[W];
  vf xv[S][K], xd[S][K], y[S][K], s2[S][K];
  const float *Bt[S], *Ct[S];
  for (int s = 0; s < S; ++s) {
    const float *xt = io.x + (t + s) * io.xs;
    if (!FULL) {
      std::fill(buf, buf + W, 0.f);
      std::memcpy(buf, xt, nk * sizeof(float));
      xt = buf;
    }
    for (int64_t i = 0; i < K; ++i) {
      xv[s][i] = load(xt + i * VL);
      xd[s][i] = xv[s][i] * delta[t + s];
      s2[s][i] = NORM ? load(sq + (t + s) * W + i * VL) : vf{};
    }
    Bt[s] = io.B + (t + s) * io.bs;
    Ct[s] = io.C + (t + s) * io.cs;
  }
  steps<S, NORM>(N, hs, decay + t, xd, Bt, Ct, y, s2);
  for (int s = 0; s < S; ++s) {
    for (int64_t i = 0; i < K; ++i) y[s][i] += D[i] * xv[s][i];
    if (GATE) {
      const float *zt = io.z + (t + s) * io.zs;
      if (!FULL) { std::memcpy(buf, zt, nk * sizeof(float)); zt = buf; }
      for (int64_t i = 0; i < K; ++i) y[s][i] *= vsilu(load(zt + i * VL));
    }
    float *ot = FULL ? io.out + (t + s) * io.os : buf;
    for (int64_t i = 0; i < K; ++i) {
      store(ot + i * VL, y[s][i]);
      if (NORM) store(sq + (t + s) * W + i * VL, s2[s][i]);
    }
    if (!FULL) std::memcpy(io.out + (t + s) * io.os, buf, nk * sizeof(float));
  }
}

// T <= TB steps of one 16-channel block of one (b, head), two at a time
template <bool NORM, bool GATE, bool FULL>
__attribute__((noinline)) static void run_block(int64_t N, int64_t T, int64_t nk, float *__restrict hs,
                                                const float *__restrict delta, const float *__restrict decay,
                                                const float *__restrict Dk, const BlockIO &io,
                                                float *__restrict sq) {
  vf D[K];
  for (int64_t i = 0; i < K; ++i) D[i] = load(Dk + i * VL);
  int64_t t = 0;
  for (; t + 2 <= T; t += 2) block_steps<2, NORM, GATE, FULL>(N, t, nk, hs, delta, decay, D, io, sq);
  if (t < T) block_steps<1, NORM, GATE, FULL>(N, t, nk, hs, delta, decay, D, io, sq);
}

using RunBlock = void (*)(int64_t, int64_t, int64_t, float *, const float *, const float *, const float *,
                          const BlockIO &, float *);
template <bool NORM, bool GATE>
static RunBlock pick_full(bool full) { return full ? run_block<NORM, GATE, true> : run_block<NORM, GATE, false>; }
static RunBlock pick(bool norm, bool gate, bool full) {
  return norm ? (gate ? pick_full<true, true>(full) : pick_full<true, false>(full))
              : (gate ? pick_full<false, true>(full) : pick_full<false, false>(full));
}

// x, z, out: [B, L, H, P];  dt: [B, L, H];  dt_bias: [H] or empty;  dt_softplus;  dt_clamp: clamp
// Δ to [dt_min, dt_max];  A: [H];  Bm, Cm: [B, L, G, N];  Dskip: [H, P] contiguous or empty;
// z empty = no gate;  h: [B, H, P, N] contiguous, initial -> final state;  nrm: [B, L, H] contiguous,
// ||h_t||_F written when non-empty.
void ssd_fwd(torch::Tensor x, torch::Tensor dt, torch::Tensor dt_bias, bool dt_softplus, bool dt_clamp,
             double dt_min, double dt_max, torch::Tensor A, torch::Tensor Bm, torch::Tensor Cm,
             torch::Tensor Dskip, torch::Tensor z, torch::Tensor h, torch::Tensor out, torch::Tensor nrm) {
  const int64_t Bsz = x.size(0), L = x.size(1), H = x.size(2), P = x.size(3);
  const int64_t G = Bm.size(2), N = Bm.size(3), R = H / G;
  const int64_t nblk = (P + W - 1) / W;
  const View X(x), Z(z), DT(dt), Bv(Bm), Cv(Cm), O(out);
  const float *Ap = A.data_ptr<float>();
  const float *bias = dt_bias.numel() ? dt_bias.data_ptr<float>() : nullptr;
  const float *Dp = Dskip.numel() ? Dskip.data_ptr<float>() : nullptr;
  float *hp = h.data_ptr<float>();
  float *np_ = nrm.numel() ? nrm.data_ptr<float>() : nullptr;
  const float lo = static_cast<float>(dt_min), hi = static_cast<float>(dt_max);
  const int64_t hsz = nblk * N * W;                        // one head's state, [nblk][N][W]
  at::parallel_for(0, Bsz * H, 1, [&](int64_t begin, int64_t end) {
    // the states of all this thread's (b, head) tasks; padded lanes have x = 0, so they stay 0
    std::vector<float> hs((end - begin) * hsz);
    alignas(64) float delta[TB], decay[TB];
    alignas(64) float sq[TB * W];                         // [TB][W]
    for (int64_t task = begin; task < end; ++task) {
      const float *h0 = hp + task * P * N;                 // [P, N] for this (b, head)
      float *hk = hs.data() + (task - begin) * hsz;
      for (int64_t p = 0; p < nblk * W; ++p)
        for (int64_t n = 0; n < N; ++n) hk[((p / W) * N + n) * W + p % W] = p < P ? h0[p * N + n] : 0.f;
    }
    // time blocks outside, tasks inside: a block's rows of x, z, B, C and dt (strided views of one
    // projection, shared by a batch's heads) are read from memory once, then from cache
    for (int64_t t0 = 0; t0 < L; t0 += TB) {
      const int64_t T = std::min(TB, L - t0);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / H, hh = task % H, g = hh / R;
        const float a = Ap[hh], bi = bias ? bias[hh] : 0.f;
        // Δ and exp(Δ A) for the block, VL steps per vector operation
        for (int64_t t = 0; t < T; ++t) delta[t] = *DT.at(b, t0 + t, hh);
        for (int64_t t = T; t < (T + VL - 1) / VL * VL; ++t) delta[t] = 0.f;
        for (int64_t t = 0; t < T; t += VL) {
          vf d = load(delta + t) + bi;
          if (dt_softplus) d = vsoftplus(d);
          if (dt_clamp) d = vmin(vmax(d, splat(lo)), splat(hi));
          store(delta + t, d);
          store(decay + t, vexp(d * a));
        }
        if (np_) std::fill(sq, sq + T * W, 0.f);
        for (int64_t k = 0; k < nblk; ++k) {
          const int64_t p0 = k * W, nk = std::min(W, P - p0);
          alignas(64) float Dk[W] = {};
          if (Dp) std::memcpy(Dk, Dp + hh * P + p0, nk * sizeof(float));
          const BlockIO io{X.at(b, t0, hh) + p0, Z ? Z.at(b, t0, hh) + p0 : nullptr, Bv.at(b, t0, g),
                           Cv.at(b, t0, g), O.at(b, t0, hh) + p0, X.sl, Z.sl, Bv.sl, Cv.sl, O.sl};
          float *hk = hs.data() + (task - begin) * hsz + k * N * W;
          pick(np_ != nullptr, bool(Z), nk == W)(N, T, nk, hk, delta, decay, Dk, io, sq);
        }
        if (np_)
          for (int64_t t = 0; t < T; ++t) {
            float s2 = 0.f;
            for (int64_t j = 0; j < W; ++j) s2 += sq[t * W + j];
            np_[(b * L + t0 + t) * H + hh] = std::sqrt(s2);
          }
      }
    }
    for (int64_t task = begin; task < end; ++task) {
      float *h0 = hp + task * P * N;
      const float *hk = hs.data() + (task - begin) * hsz;
      for (int64_t p = 0; p < P; ++p)
        for (int64_t n = 0; n < N; ++n) h0[p * N + n] = hk[((p / W) * N + n) * W + p % W];
    }
  });
}
