"""Automatic P picks (energy-ratio trigger + AIC) on physics-paired synthetic records and on noise."""

import numpy as np
import pytest

from seisfuse.data.picking import aic_onset, pick_p
from seisfuse.data.synthetic import generate_pair


def test_aic_splits_noise_from_signal_at_the_onset():
    rng = np.random.default_rng(0)
    trace = np.concatenate([rng.normal(0, 0.1, 300), rng.normal(0, 3.0, 200)])
    assert abs(aic_onset(trace) - 300) <= 2


def test_pick_p_finds_synthetic_p_arrivals_within_a_few_samples():
    examples = [generate_pair(11, i) for i in range(12)]
    errors = [pick_p(ex["waveform"]) - int(ex["p_sample"]) for ex in examples]
    assert np.median(np.abs(errors)) <= 8, errors
    assert np.max(np.abs(errors)) <= 30, errors  # well inside a P window's 0.5 s lead


def test_pick_p_refuses_records_without_an_arrival_and_bad_input():
    noise = np.random.default_rng(1).normal(size=(3001, 3))
    with pytest.raises(ValueError, match="no clear P arrival"):
        pick_p(noise)
    with pytest.raises(ValueError, match="NaN"):
        pick_p(np.full((3001, 3), np.nan))
    with pytest.raises(ValueError, match=r"\[T, C\]"):
        pick_p(np.zeros(3001))
    with pytest.raises(ValueError, match="at least"):
        pick_p(np.zeros((100, 3)))


def test_pick_p_agrees_with_obspys_ar_picker_on_its_real_example_event():
    import obspy

    stream = obspy.read()  # BW.RJOB, 3-C, 100 Hz, 30 s: a real local earthquake
    waveform = np.stack([stream.select(component=c)[0].data for c in "ZNE"], axis=-1).astype(np.float64)
    # obspy.signal.trigger.ar_pick (AR-AIC, default-style settings) puts P at 4.70 s here.
    assert abs(pick_p(waveform) - 470) <= 5
