"""Host-side span masks and negatives: the invariants of wav2vec 2.0's samplers, with a Generator."""

from __future__ import annotations

import numpy as np
import pytest

from seisfuse import masking

FRAMES, M, P = 749, 10, 0.65


def test_span_mask_is_the_union_of_spans_of_length_m():
    starts = masking.span_starts(np.random.default_rng(0), (4, FRAMES), P, M, 2)
    mask = masking.span_mask(np.random.default_rng(0), (4, FRAMES), P, M, 2)
    assert mask.shape == (4, FRAMES) and mask.dtype == bool
    for row, s in enumerate(starts):
        assert len(np.unique(s)) == len(s), "starts are drawn without replacement"
        assert s.min() >= 0 and s.max() <= FRAMES - M
        expected = np.zeros(FRAMES, bool)
        for start in s:
            expected[start:start + M] = True
        np.testing.assert_array_equal(mask[row], expected)


def test_number_of_spans_uses_one_probabilistic_rounding_per_call():
    # n = int(0.65 * 749 / 10 + eps) = 48 + [eps >= 0.315]: P(49) = 0.685, same n in every row.
    counts = []
    for seed in range(400):
        starts = masking.span_starts(np.random.default_rng(seed), (3, FRAMES), P, M, 2)
        assert len({len(s) for s in starts}) == 1
        counts.append(len(starts[0]))
    assert set(counts) == {48, 49}
    assert abs(np.mean(np.array(counts) == 49) - 0.685) < 0.07


def test_masked_fraction_matches_the_original_about_half():
    mask = masking.span_mask(np.random.default_rng(1), (64, FRAMES), P, M, 2)
    # 48.7 spans of 10 placed uniformly among 740 starts cover 1 - (1 - 10/740)^48.7 ~ 48.5 %.
    assert 0.46 < mask.mean() < 0.52


def test_min_masks_and_lengths():
    rng = np.random.default_rng(2)
    starts = masking.span_starts(rng, (2, FRAMES), 0.0, M, min_masks=3)
    assert [len(s) for s in starts] == [3, 3]
    mask = masking.span_mask(rng, (3, FRAMES), P, M, 2, lengths=[FRAMES, 300, 5])
    assert mask[1, 300:].sum() == 0 and mask[1].sum() >= M
    assert mask[2].sum() == 0  # shorter than one span: nothing fits
    assert mask[0].sum() > mask[1].sum()


@pytest.mark.parametrize("kwargs, message", [
    (dict(mask_length=0), "at least 1"), (dict(mask_length=FRAMES + 1), "longer"),
    (dict(mask_prob=1.5), "mask_prob"), (dict(lengths=[10]), "lengths"),
])
def test_span_mask_rejects_bad_arguments(kwargs, message):
    args = dict(mask_prob=P, mask_length=M, min_masks=2) | kwargs
    with pytest.raises(ValueError, match=message):
        masking.span_mask(np.random.default_rng(0), (2, FRAMES), **args)


def test_negatives_come_from_the_same_examples_other_masked_frames():
    rng = np.random.default_rng(3)
    mask, neg = masking.pretraining_masks(rng, 3, FRAMES, mask_prob=P, mask_length=M, min_masks=2,
                                          num_negatives=100)
    assert neg.shape == (3, FRAMES, 100) and neg.dtype == np.int32
    for b in range(3):
        local = neg[b] - b * FRAMES
        rows = np.flatnonzero(mask[b])
        assert np.all(mask[b][local[rows]]), "negatives are masked frames of the same example"
        assert not np.any(local[rows] == rows[:, None]), "never the frame itself"
        assert np.all(local[~mask[b]] == 0), "unused rows hold the example offset"


def test_negatives_are_uniform_over_the_other_masked_frames():
    mask = np.zeros((1, 40), bool)
    mask[0, 10:15] = True  # 5 masked frames: each row draws from the 4 others
    neg = masking.negative_indices(np.random.default_rng(4), mask, 4000)
    for t in range(10, 15):
        counts = np.bincount(neg[0, t], minlength=40)[10:15]
        assert counts[t - 10] == 0
        others = np.delete(counts, t - 10)
        assert np.all(np.abs(others / 4000 - 0.25) < 0.03)


def test_negatives_need_two_masked_frames():
    mask = np.zeros((2, 20), bool)
    mask[0, :5] = True
    mask[1, 3] = True
    with pytest.raises(ValueError, match="example 1 has 1 masked frame"):
        masking.negative_indices(np.random.default_rng(0), mask, 10)


def test_fixed_shapes_and_reproducible():
    def draw(seed):
        return masking.pretraining_masks(np.random.default_rng(seed), 2, FRAMES, mask_prob=P,
                                         mask_length=M, min_masks=2, num_negatives=100)

    (m1, n1), (m2, n2), (m3, n3) = draw(5), draw(5), draw(6)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(n1, n2)
    assert m1.shape == m3.shape and n1.shape == n3.shape
    assert not np.array_equal(m1, m3)
