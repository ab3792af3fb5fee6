"""SeisLM/wav2vec 2.0 pretraining. Variants: tiny (CPU smoke run), base, large (docs/specs.md).

    seisfuse train --config seislm_pretrain:tiny --workdir runs/seislm-tiny
"""

from seisfuse.data.transforms import WINDOW
from seisfuse.train.config import loop_defaults

PRETRAIN_WINDOWS = 3_370_000  # 8 SeisBench datasets
EPOCHS = 40
RECIPES = {"base": ("seislm-base", 112, 5e-4), "large": ("seislm-large", 192, 1e-3)}


def get_config(variant: str = "tiny"):
    c = loop_defaults()
    c.task = "seislm"
    c.num_samples = WINDOW
    c.optimizer.b1, c.optimizer.b2, c.optimizer.eps, c.optimizer.weight_decay = 0.9, 0.999, 1e-8, 0.0
    if variant == "tiny":
        c.data.update({"source": "synthetic", "num_examples": 1024, "dataset_seed": 0, "num_workers": 0})
        c.model.update({"preset": "tiny", "dtype": "float32"})
        c.total_steps, c.batch_size, c.log_every, c.checkpoint_every = 40, 8, 10, 20
        c.optimizer.lr, c.optimizer.warmup_steps = 1e-3, 8
        return c
    if variant not in RECIPES:
        raise ValueError(f"unknown variant {variant!r}: tiny, base or large")
    preset, batch, lr = RECIPES[variant]
    c.model.update({"preset": preset, "dtype": "bfloat16"})
    c.batch_size = batch
    c.total_steps = EPOCHS * PRETRAIN_WINDOWS // batch
    c.optimizer.lr = lr
    c.optimizer.warmup_steps = c.total_steps // 5  # 20% linear warm-up, then half-cosine to 0
    c.log_every, c.checkpoint_every = 50, 5000
    return c
