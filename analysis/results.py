"""What the mechanism study measures on one checkpoint, as dataclasses (analysis/measure.py fills
them, verdict.py and report.py read them, cache.py stores them as JSON).

Layers and channels are 0-based here (the report shows layers 1-based). P is the trigger position
of the short sequences (S at P, M at P+1); offsets such as `write_offset` are relative to P.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class DeltaSelectivity:
    """Δ at the write vs over the filler (tasks/measures.py's Δ ratio), per layer and channel."""
    accuracy: float                   # query accuracy of the Δ batch (sequences of the training length)
    write: np.ndarray                 # [n_layer, D] max over the write window of the batch-mean Δ
    write_offset: np.ndarray          # [n_layer, D] int: step of that max, relative to S (P+1 = M itself)
    at_token: np.ndarray              # [n_layer, D] batch-mean Δ at M itself (P+1)
    filler_median: np.ndarray         # [n_layer, D] median Δ over the filler after the window
    filler_mean: np.ndarray           # [n_layer, D] mean of the same (horizons use the mean)
    ratio: np.ndarray                 # [n_layer, D] write / filler_median
    ratio_at_token: np.ndarray        # [n_layer, D] at_token / filler_median (the earlier notes' ratio)


@dataclass
class LayerProbe:
    """Joint probes on the top-k channels of one layer (channels ranked by single-channel accuracy)."""
    order: list[int]                  # channels, best first
    acc: dict[int, float]             # {k: joint accuracy on order[:k]} at the longest distance


@dataclass
class Probes:
    """Which channels carry M: ridge probes from states h[d, :] to M."""
    channel_acc: np.ndarray           # [n_layer, n_distances, D] single-channel test accuracy
    layers: list[LayerProbe]          # per layer
    memory_layer: int                 # the layer whose joint probe decodes M best
    probe_channels: list[int]         # smallest top-k within 0.02 of the best joint accuracy
    best: float                       # that best joint accuracy
    by_distance: list[float]          # joint accuracy on probe_channels at each distance


@dataclass
class PredictedHorizon:
    """1/(mean filler Δ · |A|_eff) per memory channel, |A|_eff weighted by the written state's energy."""
    a_eff: np.ndarray                 # [D] Σ_n |A[d,n]| h_n² / Σ_n h_n² (memory layer, mean over sequences)
    per_channel: dict[int, float]     # {channel: horizon in steps}
    median: float
    low: float
    high: float


@dataclass
class Attention:
    """Hidden attention α̃ of the memory channels at the query."""
    contribution_share: float         # share of |α̃[L-1, j] u_j| from the write window j
    weight_share: float               # share of |α̃[L-1, j]| from the write window
    example_tokens: np.ndarray        # [L'] one short sequence
    example_alpha: np.ndarray         # [L', L'] its mean |α̃| over the memory channels


@dataclass
class Interventions:
    """Query accuracy under each intervention (the short interventions batch)."""
    none: float
    clamp_memory: float               # Δ = 0 over the write window on the memory channels
    clamp_random: list[float]         # the same on as many random channels of that layer, per draw
    zero_state: float                 # memory channels' state zeroed at P+10
    patch_own: float                  # their state patched at P+10 from another sequence: recalls its own M
    patch_source: float               # ... recalls the source sequence's M
    ablate: list[float]               # each layer's mixer output zeroed at every step
    ablate_first_at_write: float      # layer 1 zeroed only at S and the write window (P .. P+d_conv)
    ablate_first_after_write: float   # layer 1 zeroed after the write window, the query kept

    @property
    def clamp_random_mean(self) -> float:
        """nan when the layer has no units outside the memory set to draw from."""
        return float(np.mean(self.clamp_random)) if self.clamp_random else float("nan")

    def rows(self) -> list:
        """[(label, accuracy)] in the report's order."""
        return ([("none", self.none),
                 ("clamp Δ=0 at the write, memory channels", self.clamp_memory),
                 (f"clamp Δ=0 at the write, random channels (mean of {len(self.clamp_random)})",
                  self.clamp_random_mean),
                 ("zero state of memory channels at P+10", self.zero_state),
                 ("patch memory channels from another sequence at P+10 (own M)", self.patch_own),
                 ("patch memory channels from another sequence at P+10 (source's M)", self.patch_source)]
                + [(f"ablate layer {i + 1} mixer output", a) for i, a in enumerate(self.ablate)]
                + [("ablate layer 1 only at S and the write window (P .. P+d_conv)", self.ablate_first_at_write),
                   ("ablate layer 1 after the write window, except the query", self.ablate_first_after_write)])


@dataclass
class Freeze:
    """Δ forced to 0 on the memory channels from the end of the write window to the query."""
    length: int
    n: int
    baseline: float                   # accuracy without the clamp
    frozen: float                     # with it


@dataclass
class LongStream:
    """[S, M, filler ...] streamed out to 2^long_max_log2 steps; at each distance τ after the write."""
    n: int                            # sequences
    distances: list[int]              # τ
    rho: list[float]                  # <h(τ), h(0)> / |h(0)|² on the memory channels
    cosine: list[float]
    accuracy: list[float]             # a query S run from the states at τ
    min_margin: list[float]           # logit of M minus the best other token, worst sequence
    stopped_early: bool               # stopped after long_stop_after forgotten distances in a row


@dataclass
class Layer1Dependence:
    """Does layer 2 keep its filler Δ small by itself? (layer 1 ablated after the write window)"""
    applicable: bool                  # the memory is in layer 2
    pre_trigger_delta: float          # median over memory channels of the mean Δ before S
    filler_delta_intact: float        # ... of the mean filler Δ after the write
    accuracy: Optional[float] = None  # query accuracy with layer 1 ablated after the write window
    filler_delta_ablated: Optional[float] = None


@dataclass
class DecayPrediction:
    """ρ(τ) from the decay formula alone: Σ h0² exp(-τ Δ̄_d |A_dn|) / Σ h0² over the memory channels."""
    rho_at: list[float]               # at LongStream.distances
    horizon: Optional[float]          # τ where it falls below 1/e (None: not within 2^60)


@dataclass
class CheckpointResult:
    name: str                         # file stem
    path: str                         # as found (relative to the working directory)
    sha256: str
    task: dict
    d_conv: int
    delta: DeltaSelectivity
    probes: Probes
    memory_channels: list[int]        # Δ-selective channels of the memory layer, largest ratio first
    horizon: PredictedHorizon
    attention: Attention
    interventions: Interventions
    freeze: Freeze
    freeze_horizon: Optional[Freeze]  # the freeze test at the first failing streamed length, if any
    long: LongStream
    layer1: Layer1Dependence
    decay: DecayPrediction
    timings: dict[str, float] = field(default_factory=dict)   # {stage: seconds}
    unit: str = "channel"             # what one index is: a Mamba-1 channel, a Mamba-2 head

    @property
    def memory_layer(self) -> int:
        return self.probes.memory_layer

    @property
    def n_layer(self) -> int:
        return int(self.delta.ratio.shape[0])

    def on_memory(self, per_layer: np.ndarray) -> np.ndarray:
        """A [n_layer, D] quantity on the memory channels of the memory layer: [k]."""
        return np.asarray(per_layer)[self.memory_layer][self.memory_channels]
