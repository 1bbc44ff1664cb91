"""The science of mambascope: how a Mamba keeps a token, measured (see analysis/mechanism.py).

    analytic.py          the closed-form 2-layer induction model   python -m analysis.analytic
    hidden_attention.py  α̃, Mamba's hidden attention matrices
    compare.py           the Mechanism tab's side: checkpoints by name, predictions, Δ ratios, interventions
    probes.py            ridge probes from states to the memory token
    runs.py              the study's sequences (S at P) and model runs (snapshots of the state)
    measure.py           one checkpoint -> CheckpointResult (Δ selectivity, probes, attention, ...)
    causal.py            interventions, freeze tests, layer-1 dependence
    stream.py            the memory out to 2^20 steps; the decay formula's prediction
    results.py           the result dataclasses
    verdict.py           horizons and the verdict, computed from the results
    report.py            docs/mechanism.md and the figures' data (figures.json; viz/figures.py draws them)
    cache.py             results as JSON, reused for the same file and settings
    mechanism.py         Settings and the CLI                       python -m analysis.mechanism

Imports model/ and tasks/ (and kernels/ through them), never viz/ or ui/.
"""
