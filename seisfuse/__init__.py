"""seisfuse: JAX/Flax seismic foundation models (SFM, SeisLM) and their image-waveform joint embedding."""

__version__ = "0.1.0"
