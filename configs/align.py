"""Contrastive image-waveform alignment (CLIP / SigLIP). Variants: tiny (CPU; what `seisfuse demo`
trains), base, large; append `-mel` for the spectrogram-as-image variant (the waveform's Mel
image goes to a second SFM tower instead of SeisLM).

    seisfuse train --config configs/align.py:tiny --workdir runs/align-tiny
    seisfuse train --config configs/align.py:base --workdir runs/align-base \
        --model.image.weights=converted/sfm-base --model.waveform.weights=converted/seislm-base \
        --model.image.trainable=none --model.waveform.trainable=none    # LiT-style: heads only

Choices (all overridable): loss clip | siglip; model.logit_scale_init (default: the loss's, CLIP
log(1/0.07), SigLIP log 10; tiny: 1.0); per tower trainable all | none | last:K (tiny: the image
tower locked), pooling cls (SFM only) | mean | flatten | station (SFM image towers only: the two
patch columns under the centre trace; tiny: station for the image, flatten for the waveform),
weights = a `seisfuse convert` directory or ""
(scratch); mesh; data.p_window = [samples before P, length] (tiny: [10, 160]) or None for whole
3001-sample records; data.augment = True | False (the pair-consistent augmentation of
seisfuse.data.transforms).
"""

from seisfuse.demo import demo_config
from seisfuse.train.config import loop_defaults

TOWERS = {
    # variant: (SFM preset, SeisLM preset)
    "base": ("base", "seislm-base"),
    "large": ("large", "seislm-large"),
}


def get_config(variant: str = "tiny"):
    size, _, approach = variant.partition("-")
    if approach not in ("", "mel"):
        raise ValueError(f"unknown variant {variant!r}: tiny, base or large, optionally with -mel")
    if size == "tiny":
        c = demo_config()
    elif size in TOWERS:
        c = _accelerator_config(*TOWERS[size])
    else:
        raise ValueError(f"unknown variant {variant!r}: tiny, base or large, optionally with -mel")
    if approach == "mel":
        c.model.waveform = {**c.model.waveform, "kind": "mel-sfm", "preset": c.model.image.preset,
                            "pooling": "flatten", "trainable": "all", "overrides": {}}
        c.data.p_window = None  # the Mel image covers the whole 30 s record
    return c


def _accelerator_config(sfm: str, seislm: str):
    c = loop_defaults()
    c.task = "align"
    c.loss = "siglip"
    c.pairs = [["image", "waveform"]]
    c.model = {
        "dtype": "bfloat16",  # bf16 compute, float32 master weights
        "embed_dim": 512,
        "head": "linear",
        "logit_scale_init": None,  # the loss's own
        "modalities": ["image", "waveform"],
        "image": {"kind": "sfm", "preset": sfm, "pooling": "cls", "trainable": "all", "weights": "",
                  "overrides": {}},
        "waveform": {"kind": "seislm", "preset": seislm, "pooling": "mean", "trainable": "all",
                     "weights": "", "overrides": {}},
    }
    c.batch_size = 1024
    c.total_steps = 20_000
    c.optimizer.lr, c.optimizer.warmup_steps = 3e-4, 1000
    c.optimizer.weight_decay, c.optimizer.b2, c.optimizer.clip_norm = 1e-4, 0.95, 1.0
    c.data = {"source": "synthetic", "num_examples": 1_000_000, "dataset_seed": 0, "num_workers": 8,
              "augment": True}
    c.log_every, c.checkpoint_every = 50, 1000
    if sfm == "large":
        c.mesh.data, c.mesh.fsdp = 1, -1  # shard every weight over all devices
    return c
