"""Cross-modal retrieval metrics on held-out pairs, with the chance level beside them.

Item i of one modality is paired with item i of the other. For each query the rank of its pair
among all N candidates (1 = retrieved first) gives Recall@k (fraction of queries whose pair is in
the top k), mean and median rank. A random ranking has R@k = k/N and an expected rank (N + 1)/2;
those are reported as `chance/...` so a number is never read without its floor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

KS: tuple[int, ...] = (1, 5, 10)


def similarity(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Cosine similarity [Nq, Nc] of two embedding sets (normalised here, so any scale works)."""
    q, c = _unit(queries, "queries"), _unit(candidates, "candidates")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]}, candidates {c.shape[1]}")
    return q @ c.T


def pair_ranks(sim: np.ndarray) -> np.ndarray:
    """1-based rank of the paired candidate (column i for query i) in each row of a square matrix.

    Ties count against the query: a candidate scoring equal to the pair ranks ahead of it, so a
    collapsed model (all scores equal) gets rank N, never a flattering rank 1.
    """
    sim = np.asarray(sim, np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"retrieval needs a square [N, N] similarity matrix of pairs, got {sim.shape}")
    positive = np.diagonal(sim)[:, None]
    return np.sum(sim >= positive, axis=1)


def rank_metrics(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k, mean and median rank of 1-based ranks."""
    ranks = np.asarray(ranks)
    out = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    out["mean_rank"] = float(np.mean(ranks))
    out["median_rank"] = float(np.median(ranks))
    return out


def chance_metrics(n: int, ks: Sequence[int] = KS) -> dict[str, float]:
    """What a random ranking of n candidates scores in expectation."""
    out = {f"R@{k}": min(k, n) / n for k in ks}
    out["mean_rank"] = out["median_rank"] = (n + 1) / 2
    return out


def retrieval_metrics(embeddings: Mapping[str, np.ndarray], a: str = "image", b: str = "waveform",
                      ks: Sequence[int] = KS, prefix: str = "retrieval") -> dict[str, float]:
    """Flat dict: `{prefix}/{x}2{y}/R@k`, mean/median rank both ways (image -> img, waveform -> wav),
    `chance/...` for N pairs, and `num_pairs`."""
    for name in (a, b):
        if name not in embeddings:
            raise KeyError(f"no {name!r} embeddings; got {sorted(embeddings)}")
    x, y = np.asarray(embeddings[a]), np.asarray(embeddings[b])
    if len(x) != len(y):
        raise ValueError(f"{len(x)} {a} embeddings but {len(y)} {b} embeddings: pairs must align")
    sim = similarity(x, y)
    out: dict[str, float] = {}
    for direction, matrix in ((f"{short(a)}2{short(b)}", sim), (f"{short(b)}2{short(a)}", sim.T)):
        for key, value in rank_metrics(pair_ranks(matrix), ks).items():
            out[f"{prefix}/{direction}/{key}"] = value
    out.update({f"chance/{k}": v for k, v in chance_metrics(len(x), ks).items()})
    out["num_pairs"] = float(len(x))
    return out


def short(modality: str) -> str:
    """Key abbreviation of a modality name: image -> img, waveform -> wav, others unchanged."""
    return {"image": "img", "waveform": "wav"}.get(modality, modality)


def _unit(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{what} must be a non-empty [N, D] array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contain NaN or inf")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
