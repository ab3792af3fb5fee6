"""Seismic data: a physics-paired synthetic generator, real-format readers, transforms, grain
pipelines, TFDS builders and Mel spectrograms.

Modules load lazily by name (`seisfuse.data.synthetic`, `.readers`, `.transforms`, `.pipeline`,
`.spectrogram`, `.tfds_builders`) so that importing the package pulls in neither grain, obspy,
segyio nor tensorflow-datasets until they are used.
"""
