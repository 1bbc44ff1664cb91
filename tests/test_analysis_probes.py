"""Ridge probes (analysis/probes.py): they recover a planted linear code, and only where it is."""
import numpy as np
import pytest
import torch

from analysis.probes import accuracy, channel_accuracy, fit_probe, joint_probe

C = 5                      # classes


def planted(n: int, seed: int, noise: float = 0.05):
    """Labels y [n] and features X [n, 8] = a fixed linear code of one_hot(y) + noise, on a random
    offset and scale per feature (the probe standardises them away)."""
    g = torch.Generator().manual_seed(seed)
    code = torch.randn(C, 8, generator=torch.Generator().manual_seed(99), dtype=torch.float64)   # same code
    y = torch.randint(0, C, (n,), generator=g)
    X = torch.nn.functional.one_hot(y, C).double() @ code + noise * torch.randn(n, 8, generator=g, dtype=torch.float64)
    return X * torch.linspace(0.1, 100, 8, dtype=torch.float64) + 7.0, y


def test_probe_recovers_a_planted_linear_code():
    Xtr, ytr = planted(400, 0)
    Xte, yte = planted(200, 1)
    probe = fit_probe(Xtr, ytr, ridge=1e-3, n_classes=C)
    assert probe.W.shape == (9, C)                                   # 8 features + bias
    assert float(accuracy(probe, Xte, yte)) == 1.0
    # no code: chance level on held-out data
    shuffled = ytr[torch.randperm(400, generator=torch.Generator().manual_seed(3))]
    chance = float(accuracy(fit_probe(Xtr, shuffled, 1e-3, C), Xte, yte))
    assert chance < 0.45, chance


def test_channel_accuracy_finds_the_carrying_channel_and_a_constant_one_is_harmless():
    """States [B, D, N]: channel 2 holds the code, channel 0 is constant (std 0), the rest noise."""
    def states(n, seed):
        X, y = planted(n, seed)
        g = torch.Generator().manual_seed(seed + 10)
        S = torch.randn(n, 4, 8, generator=g, dtype=torch.float64)
        S[:, 2] = X
        S[:, 0] = 3.0
        return S, y
    Str, ytr = states(300, 0)
    Ste, yte = states(200, 1)
    acc = channel_accuracy(Str, ytr, Ste, yte, ridge=1e-3, n_classes=C).numpy()          # [D]
    assert acc.shape == (4,)
    assert acc[2] == 1.0
    assert np.all(acc[[0, 1, 3]] < 0.5), acc
    assert np.isfinite(acc).all()
    joint, probe = joint_probe(Str, ytr, Ste, yte, [np.int64(2), 3], ridge=1e-3, n_classes=C)
    assert joint == 1.0 and probe.W.shape == (2 * 8 + 1, C)
    assert joint_probe(Str, ytr, Ste, yte, [1, 3], ridge=1e-3, n_classes=C)[0] < 0.5


@pytest.mark.parametrize("ridge", [1e-6, 1e-3])
def test_probe_is_batched_over_leading_axes(ridge):
    """A [2, n, F] fit equals two separate fits."""
    (X1, y), (X2, _) = planted(100, 0), planted(100, 5)
    both = fit_probe(torch.stack([X1, X2]), y, ridge, C)
    for k, X in enumerate((X1, X2)):
        one = fit_probe(X, y, ridge, C)
        torch.testing.assert_close(both.W[k], one.W, rtol=1e-9, atol=1e-9)
