"""Host-side random masks and negative sampling, from an explicit numpy Generator.

wav2vec 2.0 span masks and contrastive negatives are drawn on the host, as in HuggingFace and
SeisLM, with the same distributions as their `_compute_mask_indices` / `_sample_negative_indices`
but without numpy's global random state. Outputs always have the same shapes for the same batch
and frame count, so a jitted step never recompiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def span_starts(rng: np.random.Generator, shape: tuple[int, int], mask_prob: float, mask_length: int,
                min_masks: int = 0, lengths: Sequence[int] | None = None) -> list[np.ndarray]:
    """Start frames of the masked spans, one array per example (see `span_mask`)."""
    batch, length = shape
    if batch < 1 or length < 1:
        raise ValueError(f"masks need at least one example of at least one frame, got shape {shape}")
    if mask_length < 1:
        raise ValueError(f"mask_length must be at least 1, got {mask_length}")
    if mask_length > length:
        raise ValueError(f"mask_length {mask_length} is longer than the {length} frames")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    lengths = [length] * batch if lengths is None else [int(n) for n in lengths]
    if len(lengths) != batch or any(not 0 <= n <= length for n in lengths):
        raise ValueError(f"lengths must be {batch} values in [0, {length}], got {lengths}")
    epsilon = rng.random()

    def num_spans(valid: int) -> int:
        n = max(int(mask_prob * valid / mask_length + epsilon), min_masks)
        n = min(n, length // mask_length)
        return max(min(n, valid - (mask_length - 1)), 0)

    return [rng.choice(max(valid - (mask_length - 1), 0), num_spans(valid), replace=False)
            for valid in lengths]


def span_mask(rng: np.random.Generator, shape: tuple[int, int], mask_prob: float, mask_length: int,
              min_masks: int = 0, lengths: Sequence[int] | None = None) -> np.ndarray:
    """bool [B, L]: spans of `mask_length` frames, possibly overlapping.

    Per example n = max(int(mask_prob·len/M + ε), min_masks) spans (ε ~ U[0,1) drawn once per
    call), capped so the spans fit; span starts are drawn without replacement from [0, len − M].
    `lengths` (valid frames per example, right padding) restricts the spans to the valid part.
    """
    mask = np.zeros(shape, dtype=bool)
    offsets = np.arange(mask_length)
    for row, starts in enumerate(span_starts(rng, shape, mask_prob, mask_length, min_masks, lengths)):
        mask[row, (starts[:, None] + offsets[None, :]).reshape(-1)] = True
    return mask


def negative_indices(rng: np.random.Generator, mask: np.ndarray, num_negatives: int) -> np.ndarray:
    """int32 [B, L, K]: for each masked frame, K frames drawn uniformly (with replacement) from the
    other masked frames of the same example, as indices into the flattened B·L frames (example b
    offset by b·L). Rows of unmasked frames hold b·L and are unused.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [B, L], got shape {mask.shape}")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")
    batch, length = mask.shape
    if batch < 1:
        raise ValueError("negatives need at least one example, got an empty batch")
    out = np.zeros((batch, length, num_negatives), dtype=np.int32)
    for row in range(batch):
        positions = np.flatnonzero(mask[row])
        count = positions.size
        if count < 2:
            raise ValueError(f"example {row} has {count} masked frame(s): negatives need at least 2")
        # Draw from the count − 1 other frames, then skip over the frame itself: uniform, never self.
        draws = rng.integers(0, count - 1, size=(count, num_negatives))
        draws += draws >= np.arange(count)[:, None]
        out[row, positions] = positions[draws]
        out[row] += row * length
    return out


def pretraining_masks(rng: np.random.Generator, batch: int, frames: int, *, mask_prob: float,
                      mask_length: int, min_masks: int, num_negatives: int,
                      lengths: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mask_time_indices bool [B, L], sampled_negative_indices int32 [B, L, K]) for one batch."""
    mask = span_mask(rng, (batch, frames), mask_prob, mask_length, min_masks, lengths)
    return mask, negative_indices(rng, mask, num_negatives)
