"""Model configuration, with mamba_ssm's field names so a config travels between the two unchanged.

Field names follow mamba_ssm.models.config_mamba.MambaConfig; the per-layer SSM settings live in
`ssm_cfg` exactly as there (d_state, d_conv, expand, dt_rank). Defaults are our induction-heads
model (Mamba paper §4.1.2 / E.1): 2 layers, d_model 64, vocab 16 content tokens + 1 trigger.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

# Mamba-1 mixer defaults, as in mamba_ssm.modules.mamba_simple.Mamba.__init__
SSM_DEFAULTS = {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto"}
# mamba_ssm's create_block / MixerModel default; not a MambaConfig field there, so it is stored
# in the checkpoint beside the config rather than inside it (keeps `MambaConfig(**config)` working)
NORM_EPSILON_DEFAULT = 1e-5


@dataclass
class MambaConfig:
    d_model: int = 64                 # residual stream width
    n_layer: int = 2
    vocab_size: int = 17              # 16 content tokens + the trigger (id 16)
    ssm_cfg: dict = field(default_factory=dict)  # d_state (N), d_conv, expand, dt_rank (R)
    rms_norm: bool = True             # RMSNorm (mamba_ssm's default); LayerNorm otherwise
    norm_epsilon: float = NORM_EPSILON_DEFAULT
    residual_in_fp32: bool = True
    # mamba_ssm pads the vocab to a multiple of 8 for GPU matmuls; 1 keeps logits at [.., 17]
    pad_vocab_size_multiple: int = 1
    tie_embeddings: bool = True       # lm_head.weight is the embedding matrix

    def __post_init__(self):
        unknown = set(self.ssm_cfg) - set(SSM_DEFAULTS) - {"layer"}
        if unknown:
            raise ValueError(f"unknown ssm_cfg keys {sorted(unknown)}; known: {sorted(SSM_DEFAULTS)}")
        if self.ssm_cfg.get("layer", "Mamba1") != "Mamba1":
            raise ValueError(f"only Mamba1 layers are supported, got ssm_cfg.layer={self.ssm_cfg['layer']!r}")
        for name in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not self.rms_norm:
            raise ValueError("only rms_norm=True is supported (LayerNorm Mamba LMs are not)")
        if not self.tie_embeddings:
            raise ValueError("only tie_embeddings=True is supported")

    # derived sizes (mamba_ssm computes them in Mamba.__init__)
    def _ssm(self, key):
        return self.ssm_cfg.get(key, SSM_DEFAULTS[key])

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
    def d_inner(self) -> int:         # D in the scan (channels); E in MambaLens
        return self.expand * self.d_model

    @property
    def dt_rank(self) -> int:         # R, §3.6: Δ = softplus(Linear_R->D(Linear_D->R(x)))
        r = self._ssm("dt_rank")
        return math.ceil(self.d_model / 16) if r == "auto" else int(r)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size + (-self.vocab_size) % m

    # serialisation: the mamba_ssm MambaConfig JSON (v2 field set, Mamba1 layers, no attention)
    def to_mamba_ssm_dict(self) -> dict:
        return {
            "d_model": self.d_model, "d_intermediate": 0, "n_layer": self.n_layer,
            "vocab_size": self.vocab_size, "ssm_cfg": {"layer": "Mamba1", **self.ssm_cfg},
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
        ssm_cfg = dict(kwargs.get("ssm_cfg") or {})
        if ssm_cfg.pop("layer", "Mamba1") != "Mamba1":
            raise ValueError(f"only Mamba1 layers are supported, got ssm_cfg.layer={d['ssm_cfg']['layer']!r}")
        kwargs["ssm_cfg"] = ssm_cfg
        kwargs.setdefault("norm_epsilon", norm_epsilon)
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)
