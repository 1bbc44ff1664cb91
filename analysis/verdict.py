"""From the measured numbers to plain statements: horizons (where ρ and accuracy cross their
thresholds) and the verdict on the conjecture, each sentence computed from a CheckpointResult.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from .results import CheckpointResult

if TYPE_CHECKING:
    from .mechanism import Settings

NOT_WITHIN = 2.0 ** 60        # the decay prediction's search range
ERRORS_BEGIN = 0.9            # "errors begin": query accuracy below this
RATIO_SELECTIVE = 100         # "Δ orders of magnitude smaller over the filler"
CAUSAL_DROP = 0.5             # a clamp "breaks" recall: accuracy below this share of the baseline
UNCHANGED = 0.1               # ... "changes nothing": within this of the baseline
SAME_DELTA = 3                # Δ before the trigger within this factor of the filler Δ: "not switched off"


def crossing(xs: Sequence[float], ys: Sequence[float], level: float) -> Optional[float]:
    """First x where y drops below `level`, log2-interpolated from the last point above; None if never."""
    for k, (x, y) in enumerate(zip(xs, ys)):
        if y < level:
            if k == 0:
                return float(x)
            x0, y0 = xs[k - 1], ys[k - 1]
            f = (y0 - level) / max(y0 - y, 1e-300)
            return float(2 ** (math.log2(x0) + f * (math.log2(x) - math.log2(x0))))
    return None


@dataclass(frozen=True)
class Horizons:
    predicted: float                  # 1/(Δ_filler·|A|_eff), median over the memory channels
    predicted_rho: Optional[float]    # the decay formula's ρ < 1/e (None: not within 2^60)
    measured_accuracy: Optional[float]   # length where accuracy < ERRORS_BEGIN (None: not in the run)
    measured_rho: Optional[float]     # distance where ρ < 1/e (None: not in the run)
    max_length: int                   # the longest streamed length


def horizons(r: CheckpointResult) -> Horizons:
    lg = r.long
    lengths = [d + 3 for d in lg.distances]
    return Horizons(predicted=r.horizon.median, predicted_rho=r.decay.horizon,
                    measured_accuracy=crossing(lengths, lg.accuracy, ERRORS_BEGIN),
                    measured_rho=crossing(lg.distances, lg.rho, 1 / math.e), max_length=lengths[-1])


def fmt(x, p: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{p - 1}e}"
    return f"{x:.{p}g}"


def not_found(x: Optional[float], bound: float) -> str:
    """x, or "> bound" when the threshold was not crossed."""
    return fmt(x) if x else "> " + fmt(float(bound))


def median_ratio(r: CheckpointResult) -> float:
    return float(np.median(r.on_memory(r.delta.ratio)))


def _checkpoint_lines(r: CheckpointResult, cfg: Settings) -> list:
    dl, mem, iv, lg, h = r.memory_layer, r.memory_channels, r.interventions, r.long, horizons(r)
    other = max(max(p.acc.values()) for li, p in enumerate(r.probes.layers) if li != dl)
    where = "as the conjecture says" if dl == 1 else "NOT in layer 2 as the conjecture says"
    rate = float(np.median(r.on_memory(r.delta.filler_mean) * r.horizon.a_eff[mem]))
    off = int(np.median(r.on_memory(r.delta.write_offset)))
    lines = [
        f"**{r.name}**: M is held in layer {dl + 1} ({where}) by {len(mem)} "
        + (f"Δ-selective {r.unit}s" if delta_selective(r, cfg) else
           f"{r.unit}s (none with a Δ ratio above {cfg.min_ratio:g}: the probe set)") + "; a probe on "
        f"{len(r.probes.probe_channels)} of them decodes M with accuracy {r.probes.best:.2f} {cfg.distances[-1]} "
        f"steps after it (best joint probe in the other layer: {other:.2f}).",
        f"  Δ there: {fmt(float(np.median(r.on_memory(r.delta.write))))} at the write (P+{off}), median ratio to "
        f"the filler {fmt(median_ratio(r))}; filler Δ·|A|_eff = {fmt(rate)} per step, i.e. {fmt(rate * 2 ** 20)} "
        f"over 2^20 steps.",
        f"  Causal: Δ = 0 over the write window on them -> accuracy {iv.clamp_memory:.2f} ("
        + (f"as many random {r.unit}s: {iv.clamp_random_mean:.2f}" if iv.clamp_random else
           f"no {r.unit} of the layer is outside the set to clamp as a control")
        + f"; none: {iv.none:.2f}); their state zeroed after the write -> "
        f"{iv.zero_state:.2f}; patched from another sequence -> {iv.patch_source:.2f} answer the source's M; Δ forced "
        f"to 0 over all filler at L = {r.freeze.length}: {r.freeze.baseline:.2f} -> {r.freeze.frozen:.2f}.",
        f"  Layer 1: ablating it everywhere -> {iv.ablate[0]:.2f}; only at S and the write window -> "
        f"{iv.ablate_first_at_write:.2f}; only after the write window (query kept) -> "
        f"{iv.ablate_first_after_write:.2f}."]
    fh = r.freeze_horizon
    if fh is not None:
        lines.append(f"  At L = 2^{int(math.log2(fh.length))}, where its recall fails, Δ forced to 0 on the memory "
                     f"{r.unit}s after the write: accuracy {fh.baseline:.2f} -> {fh.frozen:.2f} ({fh.n} sequences).")
    l1 = r.layer1
    if l1.applicable:
        lines.append(f"  With layer 1 ablated after the write window, the memory {r.unit}s' mean filler Δ goes "
                     f"{fmt(l1.filler_delta_intact)} -> {fmt(l1.filler_delta_ablated)} "
                     f"(x{fmt(l1.filler_delta_ablated / max(l1.filler_delta_intact, 1e-300))}).")
    k = len(lg.distances) - 1
    lines.append(f"  After 2^{int(math.log2(lg.distances[k]))} filler steps the written state keeps ρ = "
                 f"{fmt(lg.rho[k])} (cosine {fmt(lg.cosine[k])}), query accuracy {lg.accuracy[k]:.2f} ({lg.n} "
                 f"sequences). Horizon: 1/(Δ_filler·|A|_eff), median over the memory {r.unit}s, {fmt(h.predicted)}; "
                 f"ρ < 1/e predicted at {not_found(h.predicted_rho, NOT_WITHIN)}, measured at "
                 f"{not_found(h.measured_rho, lg.distances[-1])}; errors begin (accuracy < 90%) at "
                 f"{not_found(h.measured_accuracy, h.max_length)}. Hidden attention: "
                 f"{r.attention.contribution_share:.3f} of |α̃·u| at the query comes from the write window.")
    return lines


def causal_write_once(r: CheckpointResult) -> bool:
    """Write once with a large Δ, then a tiny Δ, on channels that causally carry M."""
    iv = r.interventions
    return (median_ratio(r) > RATIO_SELECTIVE and iv.clamp_memory < CAUSAL_DROP * iv.none
            and iv.clamp_random_mean > iv.none - UNCHANGED)


def layer1_transient(r: CheckpointResult) -> bool:
    """Layer 1 matters only around the trigger: ablating it after the write window changes nothing,
    ablating it at S .. P+d_conv breaks recall."""
    iv = r.interventions
    return (iv.ablate_first_after_write > iv.none - UNCHANGED
            and iv.ablate_first_at_write < CAUSAL_DROP * iv.none)


def _overall(results: Sequence[CheckpointResult]) -> list:
    names = lambda rs: ", ".join(r.name for r in rs) or "none"       # noqa: E731
    lines = ["- Write once with a large Δ, then a Δ orders of magnitude smaller over the filler, on channels "
             "that causally carry M (Δ clamped at the write breaks recall, random channels do not): "
             + names([r for r in results if causal_write_once(r)]) + ".",
             f"- Memory in layer 2, as conjectured: {names([r for r in results if r.memory_layer == 1])}; "
             f"in layer 1: {names([r for r in results if r.memory_layer == 0])}.",
             "- Layer 1 is only a transient signal around the trigger (ablating it after the write window "
             "changes nothing, ablating it at S .. P+d_conv breaks recall), no lasting \"trigger has been "
             "seen\" state: " + names([r for r in results if layer1_transient(r)]) + ". Such a model shows "
             "that a lasting \"trigger seen\" is not necessary: layer 2 only needs \"S was one or two tokens "
             "ago\", which a conv (kernel 4) provides."]
    for r in results:
        l1 = r.layer1
        pre, post = l1.pre_trigger_delta, l1.filler_delta_intact
        q = pre / max(post, 1e-300)
        lines.append(f"- {r.name}: mean Δ on the memory {r.unit}s before the trigger {fmt(pre)} vs over the filler "
                     f"after the write {fmt(post)} (x{fmt(q)}): "
                     + ("Δ is NOT switched off by the write -- it is just as small before S ever appears; it is "
                        "off everywhere except at the write step, which a local feature (S one or two tokens "
                        "back, in the conv window) switches on. In this model \"once M is written, Δ goes to ~0\" "
                        "holds for the filler, but the write is not its cause." if q < SAME_DELTA else
                        "Δ is smaller after the write than before the trigger: the write (or the trigger) switches "
                        "it further off, as the conjecture says."))
        if layer1_transient(r) or not l1.applicable:
            continue
        x = l1.filler_delta_ablated / max(post, 1e-300)
        lines.append(f"  Layer 1 still matters after the write (accuracy {r.interventions.ablate_first_after_write:.2f} "
                     f"without it) and without it that filler Δ is x{fmt(x)}: layer 2's Δ needs layer 1's output as "
                     "an input to stay small "
                     + ("(zero-ablation removes a signal present before the trigger too, so this is not a "
                        "'trigger seen' flag)." if q < SAME_DELTA else "(possibly the 'trigger seen' signal)."))
    for r in results:
        h = horizons(r)
        pr, mr = h.predicted_rho, h.measured_rho
        head = (f"- {r.name}: the decay formula (energy-weighted exp(-τ Δ_filler |A|)) predicts ρ < 1/e at "
                f"{not_found(pr, NOT_WITHIN)}; measured {not_found(mr, r.long.distances[-1])}; errors "
                f"begin (accuracy < 90%) at {not_found(h.measured_accuracy, h.max_length)}")
        if mr is None:
            ok = pr is None or pr >= r.long.distances[-1]
            tail = ("consistent: no decay within the run." if ok else
                    "INconsistent: it predicted decay that did not happen.")
        else:
            q = (pr or math.inf) / mr
            tail = (f"predicted/measured = {fmt(q)}: " + ("the decay formula accounts for the forgetting."
                    if 1 / 3 < q < 3 else "the decay formula alone does NOT account for it (what the filler adds "
                    "to the memory channels matters too)." if q > 3 else
                    "the state decays more slowly than the formula says."))
        lines.append(head + "; " + tail)
    return lines



def delta_selective(r, cfg) -> bool:
    """Were the memory units chosen by their Δ ratio (measure.py), not by the probe fallback?"""
    ratio = np.asarray(r.delta.ratio[r.memory_layer])
    return bool(len(r.memory_channels)) and bool((ratio[r.memory_channels] > cfg.min_ratio).all())

def verdict(results: Sequence[CheckpointResult], cfg: Settings) -> list:
    """Plain statements (Markdown lines), each computed from the numbers in the report's sections."""
    lines = []
    for r in results:
        lines += _checkpoint_lines(r, cfg)
    return lines + ["", "**Overall** (computed from the rows above):"] + _overall(results)
