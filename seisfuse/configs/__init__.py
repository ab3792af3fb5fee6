"""Experiment configs shipped with the package, one module per recipe, each with `get_config(variant)`.

Installed with seisfuse (as big_vision ships its configs), so they load by name from any install:
`seisfuse train --config align:tiny` (`seisfuse.train.config.load_config`). In a checkout the top-level
`configs/` folder is a link to this one, so `--config configs/align.py:tiny` names the same file; a
config of your own loads by its path the same way.
"""
