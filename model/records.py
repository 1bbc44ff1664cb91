"""What passes between a mixer and the loop that runs it: the state it carries, the hooks that edit
it, and which activations it records.

Every mixer (Mamba-1 in mamba.py; Mamba-2 in mamba2.py) has one interface:

    out, state, record = mixer(hidden, state, spec, backend, hooks)
        hidden [B, l, d_model] -> out [B, l, d_model]; state: LayerState after the chunk's last step;
        record: None when spec is None, else {name: [B, l, ...]} for every name in spec.include
        that the mixer computes (+ "states" when spec.states)
    mixer.init_state(batch) -> LayerState of zeros (the start of a sequence)
    mixer.A                 -> fp32 A = -exp(A_log), the only place A is computed from A_log
    mixer.unit, mixer.n_units -> what one index of a per-layer record is ("channel" for Mamba-1,
                              "head" for Mamba-2) and how many there are (U below)

Per-layer records are over units U: [B, l, U] (ssm_input, delta, state_norm, ssm_output are over
channels D for Mamba-1), plus B, C [B, l, N] and resid_post [B, l, d_model] (recorded by the LM,
not the mixer: the residual stream after the block).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import Tensor

# what every mixer's forward can record per layer, in Trace order (model/trace.py: their hook names)
RECORDABLE = ("ssm_input", "delta", "B", "C", "state_norm", "ssm_output", "resid_post")
# names only some mixers record (a mixer asked for one it lacks raises): Mamba-2's decay exp(Δ A)
# per head [B, l, H]; run() records them, Trace does not hold them
MIXER_SPECIFIC = ("decay",)


@dataclass(frozen=True)
class RecordSpec:
    """Which per-layer activations a forward records. Only what is named is computed: Δ, the state
    norm and the pre-gate output cost extra passes (the scan otherwise fuses softplus and gate)."""
    include: tuple                 # names from RECORDABLE (or MIXER_SPECIFIC)
    states: bool = False           # also h_t at every step, [B, l, *state shape]: large

    def __post_init__(self):
        object.__setattr__(self, "include", tuple(self.include))
        unknown = set(self.include) - set(RECORDABLE) - set(MIXER_SPECIFIC)
        if unknown:
            raise ValueError(f"unknown trace quantities {sorted(unknown)}; choose from "
                             f"{list(RECORDABLE + MIXER_SPECIFIC)}")


@dataclass
class LayerState:
    """What one mixer carries from one time chunk to the next (the streaming / step API).
    Mamba-1: conv [B, D, d_conv - 1] (the last pre-conv inputs), ssm [B, D, N] (h after the last
    step, fp32). Treated as immutable: edits build a new LayerState, so snapshots can share it."""
    conv: Tensor
    ssm: Tensor

    def repeat(self, batch: int) -> "LayerState":
        """A batch-1 state copied to `batch` rows (own memory: a run may update it in place)."""
        if self.conv.shape[0] != 1:
            raise ValueError(f"repeat takes a batch-1 state, got batch {self.conv.shape[0]}")
        return LayerState(self.conv.expand(batch, *self.conv.shape[1:]).contiguous(),
                          self.ssm.expand(batch, *self.ssm.shape[1:]).contiguous())


@dataclass
class MixerHooks:
    """Hook points for interventions (model/interventions.py); None = untouched, bit-identical.

    delta:  Δ after softplus [B, U, l] (units second, time last) -> replacement; the scan then
            runs on it as given
    output: the mixer's output [B, l, d_model] (after out_proj) -> replacement
    The callables see one time chunk; whoever builds them knows the chunk's offset.
    """
    delta: Optional[Callable[[Tensor], Tensor]] = None
    output: Optional[Callable[[Tensor], Tensor]] = None
