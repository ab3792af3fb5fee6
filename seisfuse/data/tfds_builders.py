"""TFDS builder that writes the physics-paired synthetic dataset as ArrayRecord files.

Works without TensorFlow: tensorflow-datasets 4.9 writes and reads ArrayRecord with numpy
features only. Build once, then read with random access through grain:

    import tensorflow_datasets as tfds
    import seisfuse.data.tfds_builders  # registers "seisfuse_synthetic_pairs"
    builder = tfds.builder("seisfuse_synthetic_pairs/small", data_dir=DIR,
                           file_format="array_record")
    builder.download_and_prepare()
    source = tfds.data_source("seisfuse_synthetic_pairs/small", split="train", data_dir=DIR)
    ds = seisfuse.data.pipeline.make_dataset(source, task="paired", batch_size=64)

Example i of split "train" is `generate_pair(seed, i)`; validation uses indices after the
training ones, so the splits never overlap. One example takes ~0.6 MB on disk (four 224×224
float32 maps dominate).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from seisfuse.data.synthetic import H, T, W, generate_pair


@dataclasses.dataclass
class SyntheticPairsConfig(tfds.core.BuilderConfig):
    """Split sizes and the generator seed of one variant."""

    train_size: int = 8
    validation_size: int = 4
    seed: int = 0


_IMAGE = tfds.features.Tensor(shape=(H, W, 1), dtype=np.float32)
_MAP = tfds.features.Tensor(shape=(H, W), dtype=np.int32, encoding=tfds.features.Encoding.ZLIB)


class SeisfuseSyntheticPairs(tfds.core.GeneratorBasedBuilder):
    """Seismic images paired with 3-C seismograms drawn from the same earth models."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        SyntheticPairsConfig(
            name="tiny", description="8 + 4 examples, for tests.", train_size=8, validation_size=4
        ),
        SyntheticPairsConfig(
            name="small", description="10k + 1k examples.", train_size=10_000, validation_size=1_000
        ),
        SyntheticPairsConfig(
            name="base", description="100k + 5k examples.", train_size=100_000, validation_size=5_000
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        scalar_f, scalar_i = (tfds.features.Tensor(shape=(), dtype=d) for d in (np.float32, np.int32))
        features = {
            "image": _IMAGE,
            "clean": _IMAGE,
            "reflectivity": _IMAGE,
            "trace_mask": _IMAGE,
            "facies": _MAP,
            "salt": _MAP,
            "waveform": tfds.features.Tensor(shape=(T, 3), dtype=np.float32),
            **{
                k: scalar_i
                for k in ("p_sample", "s_sample", "station_trace", "time_domain", "n_layers", "has_salt")
            },
            **{
                k: scalar_f
                for k in (
                    "depth_km",
                    "distance_km",
                    "magnitude",
                    "back_azimuth",
                    "snr_db",
                    "wavelet_hz",
                    "image_snr",
                )
            },
        }
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict(features), description=__doc__.split("\n\n")[0]
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        return {
            "train": self._generate_examples(range(cfg.train_size)),
            "validation": self._generate_examples(
                range(cfg.train_size, cfg.train_size + cfg.validation_size)
            ),
        }

    def _generate_examples(self, indices):
        seed = self.builder_config.seed
        for i in indices:
            yield int(i), generate_pair(seed, int(i))
