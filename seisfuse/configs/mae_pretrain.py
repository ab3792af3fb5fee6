"""SFM/MAE pretraining. Variants: tiny (CPU smoke run), base, large (SFM's recipe, docs/specs.md).

    seisfuse train --config mae_pretrain:tiny --workdir runs/mae-tiny
"""

from seisfuse.train.config import loop_defaults

PRETRAIN_IMAGES = 2_290_000  # SFM: 2.29 M 224² patches
EFFECTIVE_BATCH = 9280
EPOCHS, WARMUP_EPOCHS = 1600, 40


def get_config(variant: str = "tiny"):
    c = loop_defaults()
    c.task = "mae"
    c.mask_ratio = 0.75
    c.model.update({"preset": variant, "img_size": 224, "dtype": "float32"})
    if variant == "tiny":  # depth overridable: SFM's segmentation head taps every depth/4-th block
        c.model.depth = 2
    c.optimizer.b1, c.optimizer.b2, c.optimizer.weight_decay = 0.9, 0.95, 0.05
    if variant == "tiny":
        c.data.update({"source": "synthetic", "num_examples": 1024, "dataset_seed": 0, "num_workers": 0})
        c.total_steps, c.batch_size, c.log_every, c.checkpoint_every = 60, 8, 10, 30
        c.optimizer.lr, c.optimizer.warmup_steps = 1e-3, 10
        return c
    if variant not in ("base", "large"):
        raise ValueError(f"unknown variant {variant!r}: tiny, base or large")
    steps_per_epoch = PRETRAIN_IMAGES // EFFECTIVE_BATCH
    c.batch_size = EFFECTIVE_BATCH
    c.total_steps = EPOCHS * steps_per_epoch
    c.optimizer.warmup_steps = WARMUP_EPOCHS * steps_per_epoch
    c.optimizer.lr = 1.5e-4 * EFFECTIVE_BATCH / 256  # blr · batch / 256
    c.model.dtype = "bfloat16"  # accelerators: bf16 compute, float32 master weights
    c.log_every, c.checkpoint_every = 50, 2000
    return c
