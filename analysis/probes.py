"""Linear probes: which states decode the memory token M? Ridge least squares to one-hot labels.

    probe = fit_probe(X_train, y_train, ridge=1e-3, n_classes=16)    # X [..., n, F] fp64, y [n]
    accuracy(probe, X_test, y_test)

A probe standardises each feature (mean and std of the training set; a constant feature keeps
scale 1), appends a bias, and solves (ZᵀZ + ridge·n·I) W = Zᵀ Y for Y the one-hot labels: a
closed form, batched over leading axes (one probe per channel in one call). The prediction is the
argmax of Z W. λ scales with n so one value suits any training-set size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Probe:
    W: Tensor       # [..., F+1, n_classes] (the last row is the bias)
    mu: Tensor      # [..., 1, F] training mean
    sd: Tensor      # [..., 1, F] training std (1 where the feature is constant)

    def predict(self, X: Tensor) -> Tensor:
        """X [..., n, F] -> predicted class [..., n]."""
        Z = torch.cat([(X - self.mu) / self.sd, torch.ones_like(X[..., :1])], -1)      # [..., n, F+1]
        return (Z @ self.W).argmax(-1)


def fit_probe(X: Tensor, y: Tensor, ridge: float, n_classes: int) -> Probe:
    """Ridge least squares to one-hot labels, batched over leading axes: X [..., n, F] fp64, y [n]."""
    mu = X.mean(-2, keepdim=True)
    sd = X.std(-2, keepdim=True)
    sd = torch.where(sd > 1e-300, sd, torch.ones_like(sd))
    Z = torch.cat([(X - mu) / sd, torch.ones_like(X[..., :1])], -1)                    # [..., n, F+1]
    Y = torch.nn.functional.one_hot(y, n_classes).to(Z.dtype)                          # [n, n_classes]
    G = Z.transpose(-1, -2) @ Z + ridge * Z.shape[-2] * torch.eye(Z.shape[-1], dtype=Z.dtype)
    return Probe(torch.linalg.solve(G, Z.transpose(-1, -2) @ Y), mu, sd)               # W [..., F+1, C]


def accuracy(probe: Probe, X: Tensor, y: Tensor) -> Tensor:
    """Share of correct predictions: X [..., n, F], y [n] -> [...] fp64."""
    return (probe.predict(X) == y).double().mean(-1)


def channel_accuracy(train: Tensor, y_train: Tensor, test: Tensor, y_test: Tensor, ridge: float,
                     n_classes: int) -> Tensor:
    """One probe per channel from its state h[d, :]: train [B, D, N], test [B', D, N] -> accuracy [D]."""
    Xtr, Xte = train.transpose(0, 1), test.transpose(0, 1)                             # [D, B, N]
    return accuracy(fit_probe(Xtr, y_train, ridge, n_classes), Xte, y_test)


def joint_probe(train: Tensor, y_train: Tensor, test: Tensor, y_test: Tensor, channels, ridge: float,
                n_classes: int) -> tuple:
    """One probe on the concatenated states of `channels`: train [B, D, N] -> (test accuracy, Probe)."""
    ch = [int(c) for c in channels]
    probe = fit_probe(train[:, ch].reshape(train.shape[0], -1), y_train, ridge, n_classes)   # [B, k*N]
    return float(accuracy(probe, test[:, ch].reshape(test.shape[0], -1), y_test)), probe
