"""The largest stable step of the chunked update on a quadratic, with and without the
normalised step (docs/guides/stability.md).

Inside a chunk of ``C`` tokens every gradient is taken at the chunk-start weights (eq. 16), and
the surprise ``S_t = eta S_{t-1} - theta' g`` and the weights ``W_t = W_{t-1} + S_t`` move token
by token (eqs. 13-14 without forgetting). On a quadratic of curvature ``lambda`` (``g = lambda W``)
one chunk is a 2x2 linear map of ``(W, S)``; the update is stable when its spectral radius is
below 1 for every curvature the memory may show. This script finds, for each chunk size and
momentum, the largest ``theta`` stable for every ``lambda`` in ``(0, 2]`` (in units of
``lambda_0``), for the literal step (``theta' = theta / lambda_0``, i.e. ``theta`` measured in the
same units) and for the normalised one (``theta' = theta (1 - eta) / (C lambda_0)``).

Run: ``python benchmarks/step_bound.py``.
"""

from __future__ import annotations

import numpy as np


def spectral_radius(theta: float, eta: float, chunk: int, lam: float, normalized: bool) -> float:
    step = theta * (1 - eta) / chunk if normalized else theta
    cols = []
    for start in ((1.0, 0.0), (0.0, 1.0)):
        w, s = start
        w_chunk = w
        for _ in range(chunk):
            s = eta * s - step * lam * w_chunk
            w = w + s
        cols.append((w, s))
    return float(max(abs(np.linalg.eigvals(np.array(cols).T))))


def largest_stable(eta: float, chunk: int, normalized: bool) -> float:
    best = 0.0
    for theta in np.linspace(0.01, 4.0, 400):
        if all(spectral_radius(theta, eta, chunk, lam, normalized) < 1 for lam in np.linspace(0.05, 2.0, 40)):
            best = float(theta)
        else:
            break
    return best


def main() -> None:
    etas = (0.0, 0.5, 0.9, 0.95, 0.99)
    for normalized in (False, True):
        rule = "normalised: theta (1 - eta) / (C lambda_0)" if normalized else "literal: theta / lambda_0"
        print(f"\nlargest stable theta, curvature up to 2 lambda_0 ({rule})")
        print("| chunk | " + " | ".join(f"eta {e}" for e in etas) + " |")
        print("|---:|" + "---:|" * len(etas))
        for chunk in (1, 4, 16, 64):
            row = [largest_stable(eta, chunk, normalized) for eta in etas]
            print(f"| {chunk} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


if __name__ == "__main__":
    main()
