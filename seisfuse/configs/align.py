"""Contrastive image-waveform alignment (CLIP / SigLIP). Variants: tiny (CPU; what `seisfuse demo`
trains), base, large; append `-mel` for the spectrogram-as-image variant (the waveform's Mel
image goes to a second SFM tower instead of SeisLM).

    seisfuse train --config align:tiny --workdir runs/align-tiny
    seisfuse train --config align:base --workdir runs/align-base \
        --model.image.weights=converted/sfm-base --model.waveform.weights=converted/seislm-base \
        --model.image.trainable=none --model.waveform.trainable=none    # LiT-style: heads only

Choices (all overridable): loss clip | siglip; model.logit_scale_init (default: the loss's, CLIP
log(1/0.07), SigLIP log 10; tiny: 1.0); per tower trainable all | none | last:K (tiny: the image
tower locked), pooling cls (SFM only) | mean | flatten | station (SFM image towers only: the two
patch columns under the centre trace; tiny: station for the image, flatten for the waveform),
weights = a `seisfuse convert` directory or ""
(scratch); mesh; data.p_window = [samples before P, length] (tiny: [10, 160]) or None for whole
records (seisfuse.data.transforms.WINDOW samples); data.augment = True | False (the pair-consistent
augmentation of seisfuse.data.transforms).
"""

from seisfuse.train.config import loop_defaults

# The tiny recipe's training set (`seisfuse demo` generates it; its held-out pairs use another seed).
TRAIN_PAIRS, TRAIN_SEED = 8192, 0

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
        c = _tiny()
    elif size in TOWERS:
        c = _accelerator_config(*TOWERS[size])
    else:
        raise ValueError(f"unknown variant {variant!r}: tiny, base or large, optionally with -mel")
    if approach == "mel":
        c.model.waveform = {**c.model.waveform, "kind": "mel-sfm", "preset": c.model.image.preset,
                            "pooling": "flatten", "trainable": "all", "overrides": {}}
        c.data.p_window = None  # the Mel image covers the whole 30 s record
    return c


def _tiny():
    """The tiny CPU recipe `seisfuse demo` trains: SFM-tiny + SeisLM-tiny, CLIP loss.

    CLIP rather than SigLIP at batch 32: SigLIP's bias starts at −10 for batches of thousands and
    took several times more steps to leave chance on a learnable control (tests/test_joint_train.py).
    What the pair shares is a set of times (the station column's reflector times, the delays of
    the site's reverberations), so: waveforms are cut to 1.6 s from 0.1 s before P, first motion
    up (data.p_window; S rarely falls inside); the waveform tower pools by 'flatten', which keeps
    every token in place where a mean forgets when things happen, and the image tower by 'station',
    the same for the two patch columns under the station (the other traces are nuisance its head
    memorised). The image tower is locked (LiT-style; here at its random init, as no pretrained
    SFM weights ship): a step costs a third, which buys 8192 pairs and 3600 steps, and more pairs
    were what held-out recall lacked. Flattened features of random towers differ a lot, so CLIP's
    initial temperature (1/0.07) made them collapse to one point (loss stuck at log 32);
    logit_scale_init = 1 (scale e) learns. experiments/RESULTS.md has the measurements.
    """
    c = loop_defaults()
    c.task = "align"
    c.loss = "clip"
    c.pairs = [["image", "waveform"]]
    c.model.update({
        "dtype": "float32",
        "embed_dim": 64,
        "head": "linear",
        "logit_scale_init": 1.0,
        "modalities": ["image", "waveform"],
        "image": {"kind": "sfm", "preset": "tiny", "pooling": "station", "trainable": "none", "weights": "",
                  "overrides": {}},
        # Strides 4·4 give 10 frames per P window and a 32-tap positional conv: cheap on a CPU.
        "waveform": {"kind": "seislm", "preset": "tiny", "pooling": "flatten", "trainable": "all",
                     "weights": "", "overrides": {"conv_kernel": [4, 4], "conv_stride": [4, 4],
                                                  "num_conv_pos_embeddings": 32}},
    })
    c.batch_size = 32
    c.total_steps = 3600
    c.optimizer.lr, c.optimizer.warmup_steps, c.optimizer.weight_decay = 1e-3, 20, 1e-4
    c.data.update({"source": "synthetic", "num_examples": TRAIN_PAIRS, "dataset_seed": TRAIN_SEED,
                   "num_workers": 0, "p_window": [10, 160], "augment": True})
    c.log_every, c.checkpoint_every, c.keep_checkpoints = 10, 10_000, 1
    c.wandb.mode, c.tensorboard = "disabled", True  # the curves go into the demo's report.html
    return c


def _accelerator_config(sfm: str, seislm: str):
    c = loop_defaults()
    c.task = "align"
    c.loss = "siglip"
    c.pairs = [["image", "waveform"]]
    c.model.update({
        "dtype": "bfloat16",  # bf16 compute, float32 master weights
        "embed_dim": 512,
        "head": "linear",
        "logit_scale_init": None,  # the loss's own
        "modalities": ["image", "waveform"],
        "image": {"kind": "sfm", "preset": sfm, "pooling": "cls", "trainable": "all", "weights": "",
                  "overrides": {}},
        "waveform": {"kind": "seislm", "preset": seislm, "pooling": "mean", "trainable": "all",
                     "weights": "", "overrides": {}},
    })
    c.batch_size = 1024
    c.total_steps = 20_000
    c.optimizer.lr, c.optimizer.warmup_steps = 3e-4, 1000
    c.optimizer.weight_decay, c.optimizer.b2, c.optimizer.clip_norm = 1e-4, 0.95, 1.0
    c.data.update({"source": "synthetic", "num_examples": 1_000_000, "dataset_seed": 0, "num_workers": 8,
                   "augment": True})
    c.log_every, c.checkpoint_every = 50, 1000
    if sfm == "large":
        c.mesh.data, c.mesh.fsdp = 1, -1  # shard every weight over all devices
    return c
