"""The study's bookkeeping on constructed results (no model): `crossing`, horizons, the verdict,
the JSON cache round trip, the report and its figures (figures.json -> PNG through viz.figures)."""
import dataclasses
import json
import math

import numpy as np
import pytest

from analysis import cache
from analysis.mechanism import Settings
from analysis.report import write_report
from analysis.results import (Attention, CheckpointResult, DecayPrediction, DeltaSelectivity, Freeze,
                              Interventions, Layer1Dependence, LayerProbe, LongStream, PredictedHorizon, Probes)
from analysis.verdict import crossing, horizons, verdict

D, DIST = 8, [16, 64, 256]


def make_result(name="toy", memory_layer=1, clamp_memory=0.0, ablate_after=1.0, rho=(1.0, 1.0, 1.0),
                decay_horizon=None, sha="0" * 64, long_accuracy=(1.0, 1.0, 1.0)) -> CheckpointResult:
    """A 2-layer, 8-channel result whose memory (channels 0..2) is in `memory_layer`."""
    ratio = np.ones((2, D))
    ratio[memory_layer, :3] = [1e14, 1e13, 1e12]
    write = np.full((2, D), 1e-13)
    write[memory_layer, :3] = 15.0
    filler = write / ratio
    mem = [0, 1, 2]
    return CheckpointResult(
        name=name, path=f"checkpoints/{name}.safetensors", sha256=sha, task={"name": "induction_heads"}, d_conv=4,
        delta=DeltaSelectivity(accuracy=1.0, write=write, write_offset=np.ones((2, D), dtype=np.int64),
                               at_token=write.copy(), filler_median=filler, filler_mean=filler * 1.5, ratio=ratio,
                               ratio_at_token=ratio.copy()),
        probes=Probes(channel_acc=np.full((2, 3, D), 0.125), layers=[
            LayerProbe(order=[5, 6, 7], acc={1: 0.1, 2: 0.12}), LayerProbe(order=[0, 1, 2], acc={1: 0.4, 2: 1.0})][
            ::1 if memory_layer == 1 else -1], memory_layer=memory_layer, probe_channels=[0, 1], best=1.0,
            by_distance=[1.0, 1.0, 0.99]),
        memory_channels=mem,
        horizon=PredictedHorizon(a_eff=np.ones(D), per_channel={0: 1e13, 1: 1e12, 2: 1e11}, median=1e12, low=1e11,
                                 high=1e13),
        attention=Attention(contribution_share=0.999, weight_share=0.99, example_tokens=np.arange(6),
                            example_alpha=np.tril(np.ones((6, 6)))),
        interventions=Interventions(none=1.0, clamp_memory=clamp_memory, clamp_random=[1.0, 1.0, 0.97],
                                    zero_state=0.0, patch_own=0.06, patch_source=1.0, ablate=[0.0, 0.0],
                                    ablate_first_at_write=0.0, ablate_first_after_write=ablate_after),
        freeze=Freeze(length=1024, n=4, baseline=1.0, frozen=1.0), freeze_horizon=None,
        long=LongStream(n=2, distances=list(DIST), rho=list(rho), cosine=[1.0, 1.0, 1.0],
                        accuracy=list(long_accuracy), min_margin=[11.3, 11.3, 11.3], stopped_early=False),
        layer1=Layer1Dependence(applicable=memory_layer == 1, pre_trigger_delta=1e-13, filler_delta_intact=1e-13,
                                accuracy=1.0 if memory_layer == 1 else None,
                                filler_delta_ablated=1e-13 if memory_layer == 1 else None),
        decay=DecayPrediction(rho_at=[1.0, 1.0, 1.0], horizon=decay_horizon), timings={"delta": 1.0, "total": 2.0})


def same(a, b) -> bool:
    """Deep equality of result dataclasses (arrays: same dtype and values)."""
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name))
                                           for f in dataclasses.fields(a))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------------------------------------
# crossing and horizons

def test_crossing():
    assert crossing([16, 64, 256], [1.0, 0.9, 0.8], 0.5) is None                # never below
    assert crossing([16, 64], [0.2, 0.1], 0.5) == 16.0                          # below at the first point
    assert crossing([16, 64], [1.0, 0.0], 0.5) == pytest.approx(32.0)           # halfway in log2
    assert crossing([16, 64, 256], [1.0, 0.75, 0.25], 0.5) == pytest.approx(128.0)
    assert crossing([16, 64], [0.5, 0.4], 0.5) == 16.0                          # at the level is not below: it
    assert crossing([16, 64], [0.5, 0.5], 0.5) is None                          # starts from there, never from 64


def test_horizons():
    r = make_result(rho=(1.0, 1.0, 0.0), long_accuracy=(1.0, 0.8, 0.1), decay_horizon=200.0)
    h = horizons(r)
    assert h.predicted == 1e12 and h.predicted_rho == 200.0
    assert h.measured_rho == pytest.approx(2 ** (6 + (1 - 1 / math.e) * 2))    # between 64 and 256
    assert 19 < h.measured_accuracy < 67                                        # lengths τ + 3
    assert h.max_length == 259


# ---------------------------------------------------------------------------------------------
# the verdict

def test_verdict_on_a_write_once_memory():
    cfg = Settings(distances=(0, 200))
    lines = verdict([make_result()], cfg)
    text = "\n".join(lines)
    assert lines[0].startswith("**toy**: M is held in layer 2 (as the conjecture says) by 3 Δ-selective channels; "
                               "a probe on 2 of them decodes M with accuracy 1.00 200 steps after it (best joint "
                               "probe in the other layer: 0.12).")
    assert "median ratio to the filler 1.00e+13" in lines[1]                    # median of 1e14, 1e13, 1e12
    assert "accuracy 0.00 (as many random channels: 0.99; none: 1.00)" in lines[2]
    overall = lines[lines.index("**Overall** (computed from the rows above):") + 1:]
    assert overall[0].endswith("random channels do not): toy.")
    assert overall[1] == "- Memory in layer 2, as conjectured: toy; in layer 1: none."
    assert "no lasting \"trigger has been seen\" state: toy." in overall[2]
    assert "Δ is NOT switched off by the write" in text                         # same Δ before and after
    assert "consistent: no decay within the run." in text


def test_verdict_names_what_fails():
    """Memory in layer 1, a clamp that does not break recall, layer 1 needed after the write,
    forgetting the decay formula does not explain: each is said so."""
    r = make_result(name="odd", memory_layer=0, clamp_memory=0.9, ablate_after=0.5, rho=(1.0, 0.5, 0.1),
                    decay_horizon=1e9)
    lines = verdict([r, make_result(name="good")], Settings())
    text = "\n".join(lines)
    assert "**odd**: M is held in layer 1 (NOT in layer 2 as the conjecture says)" in text
    assert "random channels do not): good." in text
    assert "- Memory in layer 2, as conjectured: good; in layer 1: odd." in text
    assert "no lasting \"trigger has been seen\" state: good." in text
    assert "the decay formula alone does NOT account for it" in text


def test_a_memory_that_holds_every_unit_has_no_random_control_and_says_so(tmp_path):
    """A Mamba-2 layer has 8 heads; when all of them hold M there is no unit left to clamp as a
    control: the verdict and the table say so instead of printing nan."""
    r = make_result(name="all")
    r.interventions.clamp_random = []
    (line,) = [x for x in verdict([r], Settings()) if "Causal:" in x]
    assert "accuracy 0.00 (no channel of the layer is outside the set to clamp as a control; none: 1.00)" in line
    text = write_report([r], Settings(out=str(tmp_path / "doc.md"), fig_dir=str(tmp_path / "doc"),
                                      distances=(0, 4, 200)), 1.0, None, "")
    assert "| clamp Δ=0 at the write, random channels (mean of 0) | — (all hold M) |" in text
    assert "nan" not in text


# ---------------------------------------------------------------------------------------------
# the cache

def test_cache_round_trip(tmp_path):
    ckpt = tmp_path / "toy.safetensors"
    ckpt.write_bytes(b"not really a checkpoint")
    from model.checkpoint import file_sha256
    r = make_result(sha=file_sha256(ckpt), decay_horizon=1.5e13)
    r.freeze_horizon = Freeze(length=2 ** 14, n=16, baseline=0.94, frozen=1.0)
    cfg = Settings(long_seqs=3)
    path = tmp_path / "results-toy.json"
    cache.save(path, r, cfg)
    back = cache.load(path, ckpt, cfg)
    assert same(back, r)
    assert isinstance(back.probes.layers[1], LayerProbe) and list(back.probes.layers[1].acc) == [1, 2]
    assert list(back.horizon.per_channel) == [0, 1, 2]                          # int keys again
    assert back.delta.write_offset.dtype == np.int64
    assert not same(make_result(sha=r.sha256), r)                               # `same` can fail
    # another file, other measurement settings, or another format: not reused
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"another file")
    assert cache.load(path, other, cfg) is None
    assert cache.load(path, ckpt, Settings(long_seqs=4)) is None
    assert cache.load(path, ckpt, dataclasses.replace(cfg, out="elsewhere.md", threads=2)) is not None
    blob = json.loads(path.read_text())
    path.write_text(json.dumps({**blob, "format": "old"}))
    assert cache.load(path, ckpt, cfg) is None
    assert cache.load(tmp_path / "absent.json", ckpt, cfg) is None


# ---------------------------------------------------------------------------------------------
# the report and its figures

def test_report_and_figures(tmp_path):
    cfg = Settings(out=str(tmp_path / "doc.md"), fig_dir=str(tmp_path / "doc"), distances=(0, 4, 200))
    results = [make_result("trained"), make_result("analytic-2layer")]
    text = write_report(results, cfg, 60.0, None, "--long-seqs 2")
    assert text.startswith("# The induction mechanism, measured\n\nGenerated by `python -m analysis.mechanism "
                           "--long-seqs 2`")
    specs = json.loads((tmp_path / "doc" / "figures.json").read_text())
    assert set(specs) == {"delta-ratio-trained", "delta-ratio-analytic-2layer", "probe-trained",
                          "probe-analytic-2layer", "state-evolution", "horizon", "interventions",
                          "hidden-attention-trained", "hidden-attention-analytic-2layer"}
    for name, spec in specs.items():
        assert f"](doc/{spec['file']})" in text                                # linked beside the Markdown
    assert specs["delta-ratio-trained"]["kwargs"]["highlight"] == [[1, 0], [1, 1], [1, 2]]
    assert specs["delta-ratio-trained"]["kwargs"]["ratio"][1][0] == 1e14
    assert "| clamp Δ=0 at the write, random channels (mean of 3) | 0.990 | 0.990 |" in text

    from viz.figures import chart, render
    for spec in specs.values():                                                # every figure draws
        assert chart(spec).to_dict()
    rows = [r for d in chart(specs["delta-ratio-trained"]).to_dict()["datasets"].values() for r in d]
    assert sorted((r["layer"], r["channel"]) for r in rows if r["kind"] == "memory channel") == [(2, 0), (2, 1), (2, 2)]
    (png,) = render(tmp_path / "doc" / "figures.json", only=["interventions"])
    assert png == tmp_path / "doc" / "interventions.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    with pytest.raises(ValueError, match="no figure 'nope'"):
        render(tmp_path / "doc" / "figures.json", only=["nope"])
    with pytest.raises(ValueError, match="unknown chart 'os.system'"):
        chart({"chart": "os.system", "kwargs": {}})
