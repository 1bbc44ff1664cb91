"""A Mamba language model that computes exactly what mamba_ssm's `MambaLMHeadModel` computes: the
Mamba-1 mixer, the block, the LM. The block's mixer follows cfg.layer (`mixer_class`; Mamba-2's is
in mamba2.py); every mixer has the interface in records.py.

Glossary (Mamba paper, Gu & Dao 2023):
    B      batch size                 L      sequence length
    d_model residual width            D      d_inner = expand * d_model, the SSM channels
    N      d_state (§3.2)             R      dt_rank (§3.6)
    delta  Δ, the step size, softplus(dt_proj(x_proj(x)[:R]))  (§3.6, Alg. 2)
    A      -exp(A_log) [D, N]         B, C   input-dependent [B, N, L]   D  skip [D]
Module and parameter names are mamba_ssm's (backbone.embedding, backbone.layers.{i}.mixer.in_proj,
..., A_log, D, backbone.norm_f, lm_head), so a state dict is a key copy in either direction.

Layout: the residual stream is [B, L, d_model]; inside the mixer, channels-first [B, D, L] as
in mamba_ssm (the scan wants time innermost).

Deviations from mamba_ssm, all numerically neutral: the depthwise conv is run on the input
prefixed with a carried conv state (zeros at the start) instead of padding=d_conv-1 + truncation,
which lets long sequences run in time chunks (`forward_stream`); the scan backend is pluggable.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from kernels import ScanResult, resolve_backend, selective_scan
from kernels.causal_conv1d import causal_conv1d
from kernels.scan_reference import discretize_delta

from .config import MambaConfig
from .records import RECORDABLE, LayerState, MixerHooks, RecordSpec
from .run import run
from .trace import trace


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, in fp32 (mamba_ssm.ops.triton.layer_norm.rms_norm_ref)."""

    def __init__(self, d: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(x.dtype)


class MambaMixer(nn.Module):
    """The Mamba-1 block's mixer (mamba_ssm.modules.mamba_simple.Mamba), slow path semantics."""

    def __init__(self, cfg: MambaConfig, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        d_model, D, N, R = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank
        self.d_inner, self.d_state, self.dt_rank, self.d_conv = D, N, R, cfg.d_conv
        self.in_proj = nn.Linear(d_model, 2 * D, bias=False, **fk)
        self.conv1d = nn.Conv1d(D, D, kernel_size=cfg.d_conv, groups=D, padding=cfg.d_conv - 1,
                                bias=True, **fk)
        self.x_proj = nn.Linear(D, R + 2 * N, bias=False, **fk)
        self.dt_proj = nn.Linear(R, D, bias=True, **fk)
        self.A_log = nn.Parameter(torch.empty(D, N, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(D, device=device, dtype=torch.float32))
        self.out_proj = nn.Linear(D, d_model, bias=False, **fk)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min=1e-3, dt_max=1e-1, dt_init_floor=1e-4, dt_scale=1.0):
        """mamba_simple.Mamba.__init__: dt weights ~ U(±R^-0.5), dt bias = softplus^-1 of a
        log-uniform dt in [dt_min, dt_max], S4D-real A = -(1..N), D = 1."""
        std = self.dt_rank ** -0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))   # inverse of softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # [D, N]
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)

    unit = "channel"                  # what one index of a per-layer record is (Trace meta "units")

    @property
    def n_units(self) -> int:         # U: channels D
        return self.d_inner

    @property
    def A(self) -> Tensor:            # [D, N] fp32, the one place A is computed from A_log
        return -torch.exp(self.A_log.float())

    def init_state(self, batch: int) -> LayerState:
        """Zero conv and SSM states: the same as starting a sequence from scratch."""
        w = self.conv1d.weight
        return LayerState(conv=torch.zeros(batch, self.d_inner, self.d_conv - 1, device=w.device, dtype=w.dtype),
                          ssm=torch.zeros(batch, self.d_inner, self.d_state, device=w.device))

    def forward(self, hidden: Tensor, state: Optional[LayerState] = None, spec: Optional[RecordSpec] = None,
                backend: Optional[str] = None, hooks: Optional[MixerHooks] = None):
        """hidden [B, L, d_model] -> (out [B, L, d_model], LayerState after the last step, record).

        record is None without a spec; else {name: [B, L, ...]} for each name in spec.include the
        mixer computes: ssm_input u [B, L, D], delta (after softplus) [B, L, D], B, C [B, L, N],
        state_norm ||h_t[d, :]|| [B, L, D], ssm_output (y + D*u, before the gate) [B, L, D], and
        states [B, L, D, N] when spec.states. Δ, the norm and the pre-gate output cost extra passes
        and are computed only when named. `hooks` may replace Δ or the output; the record then
        shows the edited Δ.
        """
        N, R = self.d_state, self.dt_rank
        backend = resolve_backend(backend, hidden.device)
        # every [B, X, L] tensor below is a view of time-major [B, L, X] memory, as the linear
        # layers produce it: the compiled CPU kernels read it without a transpose copy
        xz = self.in_proj(hidden).transpose(1, 2)                    # [B, 2D, L]
        x, z = xz.chunk(2, dim=1)                                    # [B, D, L] each
        u, conv_next = causal_conv1d(x, self.conv1d.weight, self.conv1d.bias,
                                     state.conv if state is not None else None,
                                     activation="silu", backend=backend)     # [B, D, L]
        x_dbl = self.x_proj(u.transpose(1, 2))                        # [B, L, R+2N]
        dt, Bm, Cm = torch.split(x_dbl, [R, N, N], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)        # [B, D, L], bias in the scan
        Bm = Bm.transpose(1, 2)                                       # [B, N, L]
        Cm = Cm.transpose(1, 2)                                       # [B, N, L]
        A = self.A                                                    # [D, N]
        h0 = state.ssm if state is not None else None
        delta_bias, delta_softplus = self.dt_proj.bias.float(), True
        if hooks is not None and hooks.delta is not None:
            # the scan's own discretisation (same ops), then the edit; the scan takes Δ as given
            delta = hooks.delta(discretize_delta(delta, delta_bias, True))   # [B, D, L]
            delta_bias, delta_softplus = None, False
        record = None
        if spec is None:
            y, h_last = selective_scan(u, delta, A, Bm, Cm, self.D.float(), z=z,
                                       delta_bias=delta_bias, delta_softplus=delta_softplus,
                                       return_last_state=True, initial_state=h0, backend=backend)
        else:
            want, record = spec.include, {}
            lacking = [k for k in want if k not in RECORDABLE]
            if lacking:
                raise ValueError(f"Mamba1 layers cannot record {lacking}; recordable: {', '.join(RECORDABLE)}")
            t = lambda a: a.transpose(1, 2)                           # noqa: E731  [B, X, L] -> [B, L, X]
            if "delta" in want:   # discretise once: the record keeps Δ, the scan takes it as given
                delta = discretize_delta(delta, delta_bias, delta_softplus)      # [B, D, L]
                delta_bias, delta_softplus = None, False
                record["delta"] = t(delta)
            # y before the gate is only on record when asked for; otherwise the scan gates
            gate_inside = "ssm_output" not in want
            res = selective_scan(u, delta, A, Bm, Cm, self.D.float(), z=z if gate_inside else None,
                                 delta_bias=delta_bias, delta_softplus=delta_softplus,
                                 return_last_state=True, initial_state=h0,
                                 return_state_norm="state_norm" in want, return_states=spec.states,
                                 backend=backend)
            if not isinstance(res, ScanResult):                       # neither norm nor states asked
                res = ScanResult(res[0], res[1], None, None)
            h_last = res.last_state
            y = res.out if gate_inside else res.out * F.silu(z)
            for name, a in (("ssm_input", u), ("B", Bm), ("C", Cm)):
                if name in want:
                    record[name] = t(a)
            if not gate_inside:
                record["ssm_output"] = t(res.out)
            if res.state_norm is not None:
                record["state_norm"] = t(res.state_norm)
            if spec.states:
                record["states"] = res.states.transpose(1, 2)         # [B, L, D, N]
        out = self.out_proj(y.transpose(1, 2))                       # [B, L, d_model]
        if hooks is not None and hooks.output is not None:
            out = hooks.output(out)
        return out, LayerState(conv=conv_next, ssm=h_last), record


def mixer_class(layer: str) -> type:
    """The mixer for cfg.layer (mamba_ssm's ssm_cfg["layer"]): one entry per architecture."""
    if layer == "Mamba1":
        return MambaMixer
    if layer == "Mamba2":
        # imported on use: mamba2.py is a sibling mixer, and most models never need it
        from .mamba2 import Mamba2Mixer
        return Mamba2Mixer
    raise ValueError(f"unknown mixer layer {layer!r}; known: Mamba1, Mamba2")


class Block(nn.Module):
    """Pre-norm residual block (mamba_ssm.modules.block.Block without fused add+norm)."""

    def __init__(self, cfg: MambaConfig, device=None, dtype=None):
        super().__init__()
        self.residual_in_fp32 = cfg.residual_in_fp32
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_epsilon, device=device, dtype=dtype)
        self.mixer = mixer_class(cfg.layer)(cfg, device=device, dtype=dtype)

    def forward(self, hidden, residual, state=None, spec=None, backend=None, hooks=None):
        """-> (mixer output, residual, LayerState, record or None); see MambaMixer.forward."""
        residual = hidden + residual if residual is not None else hidden
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        hidden, state, record = self.mixer(hidden, state=state, spec=spec, backend=backend, hooks=hooks)
        return hidden, residual, state, record


class MixerModel(nn.Module):
    def __init__(self, cfg: MambaConfig, device=None, dtype=None):
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(Block(cfg, device, dtype) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, eps=cfg.norm_epsilon, device=device, dtype=dtype)


class MambaLM(nn.Module):
    """MambaLMHeadModel: embedding -> n_layer x Block -> norm_f -> tied lm_head.

        lm = MambaLM(MambaConfig())
        logits = lm(tokens)                    # tokens [B, L] int64 -> logits [B, L, vocab]
        logits, states = lm.forward_stream(tokens[:, :100])           # streaming / step API
        logits, states = lm.forward_stream(tokens[:, 100:], states)   # continues exactly
    Records, interventions and state snapshots: model.run.run(lm, tokens, ...); one sequence's
    activations as numpy: lm.trace(tokens).
    """

    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.backbone = MixerModel(config, device=device, dtype=dtype)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False,
                                 device=device, dtype=dtype)
        self._init_weights()
        self.lm_head.weight = self.backbone.embedding.weight          # tie_embeddings

    @torch.no_grad()
    def _init_weights(self, initializer_range=0.02):
        """mamba_ssm.models.mixer_seq_simple._init_weights: N(0, 0.02) embeddings, zero linear
        biases except dt_proj's, out_proj rescaled by 1/sqrt(n_layer) (GPT-2 prenorm scheme)."""
        nn.init.normal_(self.backbone.embedding.weight, std=initializer_range)
        for layer in self.backbone.layers:
            p = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            p /= math.sqrt(self.config.n_layer)

    @property
    def device(self) -> torch.device:
        return self.backbone.embedding.weight.device

    def init_states(self, batch: int) -> list[LayerState]:
        """Zero states, one per layer: the same as starting a sequence from scratch."""
        return [layer.mixer.init_state(batch) for layer in self.backbone.layers]

    def _check_tokens(self, input_ids: Tensor):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids is empty (L = 0)")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is out of range 0..{self.config.vocab_size - 1}")

    def forward_chunk(self, input_ids: Tensor, states: Optional[list] = None, *, num_last_tokens: int = 0,
                      spec: Optional[RecordSpec] = None, backend: Optional[str] = None,
                      hooks: Optional[list] = None, positions: Optional[Tensor] = None, head: bool = True):
        """One time chunk: input_ids [B, l] -> (logits [B, l or num_last_tokens, V], new states, records).

        head=False: the final hidden after norm_f [B, l or num_last_tokens, d_model] in place of the
        logits, for a caller that applies lm_head a row block at a time (model.run's `head`: at a 50k
        vocabulary a chunk's logits would be 1.6 GB).

        positions [B, K]: logits only at those steps, [B, K, V] (training on a few query steps at a
        large vocabulary: MQAR's V = 8192 head costs more than the rest of the model at every step).

        `states` from the previous chunk (None = start of sequence). records is None without a
        spec; else one dict per layer (MambaMixer.forward), plus resid_post [B, l, d_model], the
        residual stream after block i, when spec.include names it. `hooks`: None or one
        MixerHooks (or None) per layer. model.run.run is the loop that calls this.
        """
        self._check_tokens(input_ids)
        hidden = self.backbone.embedding(input_ids)                    # [B, l, d_model]
        residual = None
        new_states, records = [], ([] if spec is not None else None)
        for i, layer in enumerate(self.backbone.layers):
            hidden, residual, st, rec = layer(hidden, residual, state=states[i] if states else None,
                                              spec=spec, backend=backend,
                                              hooks=hooks[i] if hooks is not None else None)
            new_states.append(st)
            if spec is not None:
                if "resid_post" in spec.include:
                    rec["resid_post"] = hidden + residual
                records.append(rec)
        residual = hidden + residual if residual is not None else hidden
        hidden = self.backbone.norm_f(residual.to(self.backbone.norm_f.weight.dtype))
        if positions is not None:
            hidden = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))   # [B, K, d_model]
        elif num_last_tokens > 0:
            hidden = hidden[:, -num_last_tokens:]
        return (self.lm_head(hidden) if head else hidden), new_states, records

    def forward_stream(self, input_ids: Tensor, states: Optional[list] = None, num_last_tokens: int = 0,
                       backend: Optional[str] = None):
        """The step API: input_ids [B, l] -> (logits [B, l or num_last_tokens, V], new states);
        pass the states back in to continue the sequence exactly."""
        logits, states, _ = self.forward_chunk(input_ids, states, num_last_tokens=num_last_tokens, backend=backend)
        return logits, states

    def forward(self, input_ids: Tensor, num_last_tokens: int = 0, backend: Optional[str] = None,
                chunk_len: Optional[int] = None, positions: Optional[Tensor] = None,
                hooks: Optional[list] = None) -> Tensor:
        """input_ids [B, L] -> logits [B, L, V] (or [B, num_last_tokens, V], or [B, K, V] at
        `positions` [B, K]).

        Without gradients the sequence streams through model.run's chunk loop (chunk_len tokens
        at a time, default run.default_chunk_len), carrying conv and SSM states, so memory grows with
        the chunk, not with L. With gradients, or with `hooks` (forward_chunk's; training's filler
        dilation): one pass (training backpropagates through it).
        """
        if torch.is_grad_enabled() or hooks is not None:
            return self.forward_chunk(input_ids, num_last_tokens=num_last_tokens, backend=backend,
                                      positions=positions, hooks=hooks)[0]
        if positions is None:
            return run(self, input_ids, num_last_tokens=num_last_tokens, backend=backend, chunk_len=chunk_len).logits
        keep = input_ids.shape[1] - int(positions.min())
        logits = run(self, input_ids, num_last_tokens=keep, backend=backend, chunk_len=chunk_len).logits
        return logits.gather(1, (positions - (input_ids.shape[1] - keep))[..., None].expand(-1, -1, logits.shape[-1]))

    def trace(self, tokens, **kwargs):
        """Record every layer's activations for one sequence; see model.trace.trace."""
        return trace(self, tokens, **kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
