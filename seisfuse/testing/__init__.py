"""Plain-PyTorch references of the original models and metrics, and timing helpers, for the parity
tests and the JAX-vs-PyTorch benchmarks.

The references keep the originals' module and attribute names so their `state_dict()` keys match
the released checkpoints. This is the only part of seisfuse that imports torch, which only the
`dev` extra installs; the rest of the package never imports this module.
"""

try:
    import torch  # noqa: F401
except ImportError as err:  # torch is a dev-only dependency
    raise ImportError(
        "seisfuse.testing needs PyTorch (the references are plain torch.nn); install the dev extra: "
        "pip install 'seisfuse[dev]'"
    ) from err
