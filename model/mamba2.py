"""The Mamba-2 mixer: what mamba_ssm's `Mamba2` (and HF transformers' `Mamba2Mixer`) compute.

Glossary (Dao & Gu 2024, "Transformers are SSMs"; mamba_ssm/modules/mamba2.py):
    B      batch size                  L      sequence length
    D      d_inner = expand * d_model  H      nheads = D / P
    P      headdim                     G      ngroups: heads share B and C in G groups (§7.2)
    N      d_state
    delta  Δ [B, L, H]: one step size per head, clamp(softplus(dt + dt_bias), *dt_limit)
    A      -exp(A_log) [H]: one scalar per head (Mamba-1 has [D, N])
    B, C   input-dependent [B, L, G, N]       D  skip, [H] (or [D] with D_has_hdim)
    h      the state, [B, H, P, N] per step:  h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t ⊗ B_t,  y_t = h_t C_t + D x_t

The block (mamba2.Mamba2.forward, the non-fused branch it mirrors line by line):
    in_proj(hidden) -> z [D] | xBC [D + 2GN] | dt [H]          (that order, d_in_proj = 2D + 2GN + H)
    xBC = silu(causal depthwise conv(xBC)); x, B, C = split(xBC)
    y = SSD scan(x, Δ, A, B, C) + D x                           (kernels.mamba_chunk_scan)
    out = out_proj(RMSNormGated(y, z))                          norm(y * silu(z)), groups of D / G
Parameter names are mamba_ssm's (in_proj, conv1d, dt_bias, A_log, D, norm.weight, out_proj), so a
state dict is a key copy; HF's Mamba2Mixer uses the same names.

Layout: time-major [B, L, ...] throughout, as mamba_ssm's Mamba2 (the conv alone runs
channels-first, [B, conv_dim, L]).

Deviations, all numerically neutral in fp32: the conv runs on the input prefixed with a carried
conv state (zeros at the start) instead of padding=d_conv-1 + truncation, so a sequence can stream
in time chunks; A_log, dt_bias and D are kept in fp32 whatever the model dtype (mamba_ssm keeps D
in fp32 and casts A_log to fp32 before use); the gated norm's eps is the config's norm_epsilon
(mamba_ssm hard-codes 1e-5, its default norm_epsilon; HF uses layer_norm_epsilon, as here).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from kernels import mamba_chunk_scan
from kernels.causal_conv1d import causal_conv1d
from kernels.ssd import resolve_backend
from kernels.ssd_reference import DT_LIMIT_NONE, SSDResult, discretize_dt

from .config import MambaConfig
from .records import LayerState, MixerHooks, RecordSpec

# What this mixer can record, each [B, L, ...] (see Mamba2Mixer.forward); "states" via spec.states
RECORDABLE = ("ssm_input", "delta", "decay", "B", "C", "state_norm", "ssm_output")


class RMSNormGated(nn.Module):
    """mamba_ssm.ops.triton.layernorm_gated.rms_norm_ref: y * silu(z) (norm_before_gate=False),
    then an RMSNorm over each group of `group_size` channels, times `weight`; fp32 inside."""

    def __init__(self, d: int, group_size: int, eps: float = 1e-5, norm_before_gate: bool = False,
                 device=None, dtype=None):
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, y: Tensor, z: Optional[Tensor] = None) -> Tensor:
        """y, z: [..., d] -> [..., d] in y's dtype. z=None: no gate (as mamba_ssm's; the mixer passes
        y already gated when the scan applied silu(z))."""
        yf = y.float()
        if z is not None and not self.norm_before_gate:
            yf = F.silu(z.float()).mul_(yf)                            # y * silu(z), in silu's buffer
        # torch's fused RMSNorm over each group (one pass instead of square, mean, rsqrt, multiply:
        # measured 0.3 vs 1.3 ms at [4096, 128] on one core, same values in fp32)
        g = F.rms_norm(yf.unflatten(-1, (-1, self.group_size)), (self.group_size,), eps=self.eps)  # [..., G, d / G]
        out = g.flatten(-2) * self.weight.float()                      # [..., d]
        if z is not None and self.norm_before_gate:
            out = out * F.silu(z.float())
        return out.to(y.dtype)


class Mamba2Mixer(nn.Module):
    """mamba_ssm.modules.mamba2.Mamba2 (d_ssm = d_inner, no gated-MLP part, no tensor parallelism)."""

    unit = "head"             # Δ, decay and state_norm are per head: interventions index heads

    def __init__(self, cfg: MambaConfig, device=None, dtype=None):
        super().__init__()
        if cfg.layer != "Mamba2":
            raise ValueError(f"Mamba2Mixer needs ssm_cfg.layer='Mamba2', got {cfg.layer!r}")
        fk = {"device": device, "dtype": dtype}
        D, N, H, G = cfg.d_inner, cfg.d_state, cfg.nheads, cfg.ngroups
        self.d_inner, self.d_state, self.d_conv = D, N, cfg.d_conv
        self.nheads, self.headdim, self.ngroups = H, cfg.headdim, G
        self.chunk_size, self.dt_limit = cfg.chunk_size, cfg.dt_limit
        self.conv_dim = cfg.conv_dim                                   # D + 2GN: x, B, C
        self.D_has_hdim = bool(cfg.ssm("D_has_hdim"))
        bias = bool(cfg.ssm("bias"))
        self.in_proj = nn.Linear(cfg.d_model, 2 * D + 2 * G * N + H, bias=bias, **fk)   # z, xBC, dt
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=cfg.d_conv, groups=self.conv_dim,
                                padding=cfg.d_conv - 1, bias=bool(cfg.ssm("conv_bias")), **fk)
        f32 = {"device": device, "dtype": torch.float32}
        self.dt_bias = nn.Parameter(torch.empty(H, **f32))
        self.A_log = nn.Parameter(torch.empty(H, **f32))
        self.D = nn.Parameter(torch.empty(D if self.D_has_hdim else H, **f32))
        # mamba_ssm: group_size = d_ssm // ngroups, so the norm never mixes two groups' heads
        self.norm = None
        if cfg.ssm("rmsnorm"):
            self.norm = RMSNormGated(D, D // G, eps=cfg.norm_epsilon,
                                     norm_before_gate=bool(cfg.ssm("norm_before_gate")), **fk)
        self.out_proj = nn.Linear(D, cfg.d_model, bias=bias, **fk)
        self.reset_ssm_parameters(cfg)

    @torch.no_grad()
    def reset_ssm_parameters(self, cfg: MambaConfig):
        """Mamba2.__init__: dt_bias = softplus^-1 of a log-uniform dt in [dt_min, dt_max] (floored),
        A = U(A_init_range) per head, D = 1; conv weights U(±conv_init) when set; linear biases 0
        (mixer_seq_simple._init_weights)."""
        dt_min, dt_max = cfg.ssm("dt_min"), cfg.ssm("dt_max")
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=cfg.ssm("dt_init_floor"))
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))          # inverse of softplus
        A = torch.empty(self.nheads, dtype=torch.float32).uniform_(*cfg.ssm("A_init_range"))
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)
        if cfg.ssm("conv_init") is not None:
            nn.init.uniform_(self.conv1d.weight, -cfg.ssm("conv_init"), cfg.ssm("conv_init"))
        for lin in (self.in_proj, self.out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    @property
    def n_units(self) -> int:
        return self.nheads

    @property
    def A(self) -> Tensor:
        """A = -exp(A_log), fp32 [H]: one decay rate per head."""
        return -torch.exp(self.A_log.float())

    def init_state(self, batch: int) -> LayerState:
        """Zero states, the start of a sequence: conv [B, D + 2GN, d_conv - 1], ssm [B, H, P, N] fp32."""
        w = self.in_proj.weight
        return LayerState(conv=torch.zeros(batch, self.conv_dim, self.d_conv - 1, device=w.device, dtype=w.dtype),
                          ssm=torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=w.device,
                                          dtype=torch.float32))

    def forward(self, hidden: Tensor, state: Optional[LayerState] = None, spec: Optional[RecordSpec] = None,
                backend: Optional[str] = None, hooks: Optional[MixerHooks] = None):
        """hidden [B, L, d_model] -> (out [B, L, d_model], LayerState after the last step, record).

        state: LayerState from the previous time chunk (None = start of sequence).
        spec (RecordSpec or None): what to record; record is None when spec is None, else a dict
        with the names in spec.include (RECORDABLE), each [B, L, ...]:
            ssm_input   [B, L, D]        x after conv + SiLU, heads flattened (channel = head * P + p)
            delta       [B, L, H]        Δ per head (after dt_bias, softplus, dt_limit; hooks applied)
            decay       [B, L, H]        exp(Δ A): the factor each head's state keeps per step
            B, C        [B, L, G, N]
            state_norm  [B, L, H]        ||h_t[head]||_F over P x N
            ssm_output  [B, L, D]        y + D x, before the gate and the norm
        and "states" [B, L, H, P, N] (h_t, fp32) when spec.states.
        hooks (MixerHooks): hooks.delta gets Δ as [B, H, l] (heads where Mamba-1 has channels) and
        returns its replacement; hooks.output edits out [B, l, d_model].
        backend: the SSD scan backend (kernels.ssd.SSD_BACKENDS; None picks per device).
        """
        batch, L, _ = hidden.shape
        D, N, H, P, G = self.d_inner, self.d_state, self.nheads, self.headdim, self.ngroups
        backend = resolve_backend(backend, hidden.device)
        want = tuple(spec.include) if spec is not None else ()
        want_states = bool(spec.states) if spec is not None else False
        zxbcdt = self.in_proj(hidden)                                   # [B, L, 2D + 2GN + H]
        z, xBC, dt = torch.split(zxbcdt, [D, self.conv_dim, H], dim=-1)
        bias = self.conv1d.bias if self.conv1d.bias is not None else xBC.new_zeros(self.conv_dim)
        xBC, conv_next = causal_conv1d(xBC.transpose(1, 2), self.conv1d.weight, bias,
                                       state.conv if state is not None else None,
                                       activation="silu", backend=backend)   # [B, D + 2GN, L]
        x, Bm, Cm = torch.split(xBC.transpose(1, 2), [D, G * N, G * N], dim=-1)
        x = x.reshape(batch, L, H, P)                                   # [B, L, H, P]
        Bm = Bm.reshape(batch, L, G, N)                                 # [B, L, G, N]
        Cm = Cm.reshape(batch, L, G, N)                                 # [B, L, G, N]
        A = self.A                                                      # [H]
        Dskip = self.D.float().reshape(H, P) if self.D_has_hdim else self.D.float()   # [H, P] or [H]
        dt_args = dict(dt_bias=self.dt_bias.float(), dt_softplus=True, dt_limit=self.dt_limit)
        delta = None
        if (hooks is not None and hooks.delta is not None) or "delta" in want or "decay" in want:
            # the scan's own discretisation (same ops, fp32), then the edit; the scan takes Δ as given
            delta = discretize_dt(dt, self.dt_bias, True, self.dt_limit)           # [B, L, H] fp32
            if hooks is not None and hooks.delta is not None:
                delta = hooks.delta(delta.transpose(1, 2)).transpose(1, 2)       # via [B, H, L]
            dt, dt_args = delta, dict(dt_bias=None, dt_softplus=False, dt_limit=DT_LIMIT_NONE)
        # z gates inside the scan unless y is on record: without the gated norm (as mamba_ssm), and on
        # the compiled CPU scan before a norm(y * silu(z)), whose input is that product (the fused
        # gate measured ~3x cheaper than torch's silu and multiply; the torch path, what training
        # runs, keeps the gate in the norm)
        gate_in_scan = "ssm_output" not in want and (
            self.norm is None or (backend == "cpu" and not self.norm.norm_before_gate))
        z_heads = z.reshape(batch, L, H, P)                             # [B, L, H, P]
        res = mamba_chunk_scan(x, dt, A, Bm, Cm, self.chunk_size, D=Dskip, z=z_heads if gate_in_scan else None,
                               initial_states=state.ssm if state is not None else None,
                               return_final_states=True, return_state_norm="state_norm" in want,
                               return_states=want_states, backend=backend, **dt_args)
        if not isinstance(res, SSDResult):                              # neither norm nor states asked
            res = SSDResult(res[0], res[1], None, None)
        y = res.out.reshape(batch, L, D)                                # [B, L, D]
        if self.norm is not None:
            out = self.norm(y, None if gate_in_scan else z)
        else:
            out = y if gate_in_scan else y * F.silu(z)
        out = self.out_proj(out)                                        # [B, L, d_model]
        if hooks is not None and hooks.output is not None:
            out = hooks.output(out)
        new_state = LayerState(conv=conv_next, ssm=res.final_states)
        if spec is None:
            return out, new_state, None
        available = {
            "ssm_input": lambda: x.reshape(batch, L, D),
            "delta": lambda: delta,
            "decay": lambda: torch.exp(delta * A),                      # [B, L, H]
            "B": lambda: Bm, "C": lambda: Cm,
            "state_norm": lambda: res.state_norm,
            "ssm_output": lambda: y,
        }
        unknown = [k for k in want if k not in available and k != "resid_post"]
        if unknown:
            raise ValueError(f"Mamba2 layers cannot record {unknown}; recordable: {', '.join(RECORDABLE)}")
        record = {k: available[k]() for k in want if k in available}
        if want_states:
            record["states"] = res.states                               # [B, L, H, P, N]
        return out, new_state, record
