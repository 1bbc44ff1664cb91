"""Model configuration, with mamba_ssm's field names so a config travels between the two unchanged.

Field names follow mamba_ssm.models.config_mamba.MambaConfig; the per-layer SSM settings live in
`ssm_cfg` exactly as there, and `ssm_cfg["layer"]` picks the mixer as mamba_ssm's create_block does:
    "Mamba1" (default)  d_state (N), d_conv, expand, dt_rank (R)          mamba_simple.Mamba
    "Mamba2"            d_state (N), d_conv, expand, headdim (P), ngroups (G), chunk_size, ...
                                                                          modules/mamba2.Mamba2
A key left out of ssm_cfg takes that mixer's mamba_ssm default (the tables below), so a config
written by mamba_ssm reads back the same. Defaults are our induction-heads model (Mamba paper
§4.1.2 / E.1): 2 layers, d_model 64, vocab 16 content tokens + 1 trigger.

    MambaConfig(ssm_cfg={"layer": "Mamba2", "d_state": 64, "headdim": 16})   # H = 128 / 16 = 8 heads
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

LAYERS = ("Mamba1", "Mamba2")
# Mamba-1 mixer defaults, as in mamba_ssm.modules.mamba_simple.Mamba.__init__
SSM_DEFAULTS = {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto"}
# Mamba-2 mixer defaults, as in mamba_ssm.modules.mamba2.Mamba2.__init__ (its keyword arguments that
# change the model; use_mem_eff_path / process_group / layer_idx choose kernels or sharding only)
MAMBA2_DEFAULTS = {
    "d_state": 128, "d_conv": 4, "expand": 2,
    "headdim": 64,                  # P, channels per head; H = d_inner / P heads
    "ngroups": 1,                   # G, heads share B and C in G groups (like GQA's key/value heads)
    "A_init_range": [1, 16],        # A = -U(1, 16) per head at init
    "dt_min": 0.001, "dt_max": 0.1, "dt_init_floor": 1e-4,  # Δ at init: log-uniform, floored
    "dt_limit": [0.0, math.inf],    # Δ is clamped to this after softplus ((0, inf) = no clamp)
    "chunk_size": 256,              # SSD block length (§6); the result does not depend on it
    "rmsnorm": True,                # the gated RMSNorm before out_proj; False: y * silu(z) only
    "norm_before_gate": False,      # False: norm(y * silu(z)) -- mamba_ssm's and HF's choice
    "conv_bias": True, "bias": False,   # bias: in_proj and out_proj
    "D_has_hdim": False,            # D per head [H] (False) or per channel [H * P]
    "conv_init": None,              # conv weights ~ U(±conv_init) at init; None: nn.Conv1d's
}
# accepted because mamba_ssm configs carry them, but they only pick kernels there
MAMBA2_IGNORED = {"use_mem_eff_path"}
DEFAULTS = {"Mamba1": SSM_DEFAULTS, "Mamba2": MAMBA2_DEFAULTS}
# mamba_ssm's create_block / MixerModel default; not a MambaConfig field there, so it is stored
# in the checkpoint beside the config rather than inside it (keeps `MambaConfig(**config)` working)
NORM_EPSILON_DEFAULT = 1e-5


def _positive_int(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


@dataclass
class MambaConfig:
    d_model: int = 64                 # residual stream width
    n_layer: int = 2
    vocab_size: int = 17              # 16 content tokens + the trigger (id 16)
    ssm_cfg: dict = field(default_factory=dict)  # the mixer: layer + its settings (tables above)
    rms_norm: bool = True             # RMSNorm (mamba_ssm's default); LayerNorm otherwise
    norm_epsilon: float = NORM_EPSILON_DEFAULT
    residual_in_fp32: bool = True
    # mamba_ssm pads the vocab to a multiple of 8 for GPU matmuls; 1 keeps logits at [.., 17]
    pad_vocab_size_multiple: int = 1
    tie_embeddings: bool = True       # lm_head.weight is the embedding matrix

    def __post_init__(self):
        if not isinstance(self.ssm_cfg, dict):
            raise ValueError(f"ssm_cfg must be a dict, got {type(self.ssm_cfg).__name__}")
        layer = self.ssm_cfg.get("layer", "Mamba1")
        if layer not in LAYERS:
            raise ValueError(f"only Mamba1 and Mamba2 layers are supported, got ssm_cfg.layer={layer!r}")
        # one canonical form, so a config equals itself after a JSON round trip: Mamba1 is the
        # implied default (mamba_ssm's create_block) and tuples are lists
        ssm = {k: list(v) if isinstance(v, tuple) else v for k, v in self.ssm_cfg.items()}
        if layer == "Mamba1":
            ssm.pop("layer", None)
        self.ssm_cfg = ssm
        known = set(DEFAULTS[layer]) | ({"layer"} | MAMBA2_IGNORED if layer == "Mamba2" else set())
        unknown = set(ssm) - known
        if unknown:
            raise ValueError(f"unknown ssm_cfg keys {sorted(unknown)} for {layer} layers; "
                             f"known: {sorted(DEFAULTS[layer])}")
        for name in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple"):
            _positive_int(name, getattr(self, name))
        for name in ("d_state", "d_conv", "expand"):
            _positive_int(f"ssm_cfg.{name}", self._ssm(name))
        if layer == "Mamba2":
            self._check_mamba2()
        if not self.rms_norm:
            raise ValueError("only rms_norm=True is supported (LayerNorm Mamba LMs are not)")
        if not self.tie_embeddings:
            raise ValueError("only tie_embeddings=True is supported (the LM's lm_head is the embedding "
                             "matrix)")

    def _check_mamba2(self):
        """The sizes mamba_ssm's Mamba2.__init__ asserts, with the values in the message."""
        for name in ("headdim", "ngroups", "chunk_size"):
            _positive_int(f"ssm_cfg.{name}", self._ssm(name))
        D, P, G = self.d_inner, self.headdim, self.ngroups
        if D % P:
            raise ValueError(f"Mamba2: d_inner = expand * d_model = {D} is not a multiple of headdim={P}; "
                             f"choose headdim among the divisors of {D}")
        if self.nheads % G:
            raise ValueError(f"Mamba2: ngroups={G} must divide nheads = d_inner / headdim = {self.nheads} "
                             "(each group's B, C serve nheads / ngroups heads)")
        lo, hi = self._ssm("A_init_range")
        if not 0 < lo <= hi:
            raise ValueError(f"Mamba2: A_init_range must satisfy 0 < low <= high, got {[lo, hi]}")
        lo, hi = self.dt_limit
        if not 0 <= lo < hi:
            raise ValueError(f"Mamba2: dt_limit must satisfy 0 <= low < high, got {[lo, hi]}")

    @property
    def layer(self) -> str:           # the mixer: "Mamba1" or "Mamba2" (mamba_ssm's ssm_cfg["layer"])
        return self.ssm_cfg.get("layer", "Mamba1")

    # derived sizes (mamba_ssm computes them in Mamba.__init__ / Mamba2.__init__)
    def _ssm(self, key):
        return self.ssm_cfg.get(key, DEFAULTS[self.layer][key])

    def ssm(self, key):
        """One ssm_cfg setting of this layer type, its mamba_ssm default when not set."""
        if key not in DEFAULTS[self.layer]:
            raise KeyError(f"{key!r} is not a {self.layer} setting; known: {sorted(DEFAULTS[self.layer])}")
        return self._ssm(key)

    @property
    def d_state(self) -> int:         # N
        return int(self._ssm("d_state"))

    @property
    def d_conv(self) -> int:
        return int(self._ssm("d_conv"))

    @property
    def expand(self) -> int:
        return int(self._ssm("expand"))

    @property
    def d_inner(self) -> int:         # D in the scan (channels); E in MambaLens; H * P for Mamba2
        return self.expand * self.d_model

    @property
    def dt_rank(self) -> int:         # R, §3.6: Δ = softplus(Linear_R->D(Linear_D->R(x))); Mamba1 only
        if self.layer != "Mamba1":
            raise AttributeError(f"dt_rank is a Mamba1 setting; {self.layer} computes Δ per head in in_proj")
        r = self._ssm("dt_rank")
        return math.ceil(self.d_model / 16) if r == "auto" else int(r)

    # Mamba-2 (Dao & Gu 2024, §7): H heads of P channels, Δ and A one scalar per head
    @property
    def headdim(self) -> int:         # P
        return int(self.ssm("headdim"))

    @property
    def nheads(self) -> int:          # H
        return self.d_inner // self.headdim

    @property
    def ngroups(self) -> int:         # G
        return int(self.ssm("ngroups"))

    @property
    def chunk_size(self) -> int:
        return int(self.ssm("chunk_size"))

    @property
    def dt_limit(self) -> tuple:
        lo, hi = self.ssm("dt_limit")
        return float(lo), float(hi)

    @property
    def conv_dim(self) -> int:        # channels through the causal conv: D (Mamba1); x, B, C (Mamba2)
        return self.d_inner if self.layer == "Mamba1" else self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def delta_width(self) -> int:     # Δ's units: D channels (Mamba1), H heads (Mamba2)
        return self.d_inner if self.layer == "Mamba1" else self.nheads

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size + (-self.vocab_size) % m

    # serialisation: the mamba_ssm MambaConfig JSON (v2 field set, no attention)
    def to_mamba_ssm_dict(self) -> dict:
        return {
            "d_model": self.d_model, "d_intermediate": 0, "n_layer": self.n_layer,
            "vocab_size": self.vocab_size, "ssm_cfg": {**self.ssm_cfg, "layer": self.layer},
            "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": self.rms_norm,
            "residual_in_fp32": self.residual_in_fp32, "fused_add_norm": True,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "tie_embeddings": self.tie_embeddings,
        }

    @classmethod
    def from_mamba_ssm_dict(cls, d: dict, norm_epsilon: float = NORM_EPSILON_DEFAULT) -> "MambaConfig":
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
        if d.get("d_intermediate", 0):
            raise ValueError("d_intermediate > 0 (MLP blocks) is not supported")
        if d.get("attn_layer_idx"):
            raise ValueError("attention layers (attn_layer_idx) are not supported")
        ours = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in ours}
        missing = {"d_model", "n_layer", "vocab_size"} - set(kwargs)
        if missing:
            raise ValueError(f"config is missing {sorted(missing)}")
        kwargs["ssm_cfg"] = dict(kwargs.get("ssm_cfg") or {})
        kwargs.setdefault("norm_epsilon", norm_epsilon)
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)
