"""SFM fine-tuning: segmentation (facies, salt) and regression (denoise, reflectivity, interpolation).

Variants: facies, salt, denoise, reflectivity, interpolation; append `-tiny` for a CPU-sized run on
the synthetic generator's labels. The full variants follow SFM-Finetune/Application/*.sh:
facies: SFM-Base at 768², 6 classes; salt: 224², 2 classes; base lr 1.5e-3 (lr = blr·batch/256),
layer decay 0.05 (sic, the scripts' value), drop path 0.1, 100 epochs with 10 warm-up, batch 1 ×
2 accumulation. The regression scripts' epoch counts are not in this package's notes: they use the
segmentation recipe (say so when you report them).

    seisfuse finetune --config sfm_finetune:facies-tiny --workdir runs/facies-tiny
    seisfuse finetune --config sfm_finetune:facies --workdir runs/facies \
        --init converted/sfm-base --config.data.path=DATA/facies
    seisfuse evaluate runs/facies-tiny

Keys: model.preset/img_size (+ any MAEConfig field), model.head (num_classes | out_channels,
drop_path, head widths), model.freeze = none | encoder (SFM's --forzen), init = a `seisfuse convert`
folder (pretrained or fine-tuned SFM) or an MAE run of `seisfuse train`; regress.residual (the
model predicts the noise: denoising), regress.interpolation (SFM's random trace mask),
regress.msssim_weight (a of SFM's loss (1 − a)·MSE + a·(1 − MS-SSIM)); data.label_key = the label
(segment) or target (regress).
"""

from seisfuse.train.config import loop_defaults

TASKS = {
    # variant: (task, label_key, classes or output channels, image size, regression options)
    "facies": ("segment", "label", 6, 768, {}),
    "salt": ("segment", "label", 2, 224, {}),
    "denoise": ("regress", "clean", 1, 224, {"residual": True}),
    "reflectivity": ("regress", "reflectivity", 1, 224, {}),
    "interpolation": ("regress", "image", 1, 224, {"interpolation": True, "msssim_weight": 0.1}),
}
# The synthetic generator's counterparts: facies = unit id (10 layers + salt: 11 classes).
SYNTHETIC_LABELS = {"facies": ("facies", 11), "salt": ("salt", 2)}
EPOCHS, WARMUP_EPOCHS, BLR, TRAIN_IMAGES = 100, 10, 1.5e-3, 2000


def get_config(variant: str = "facies-tiny"):
    name, _, size = variant.partition("-")
    if name not in TASKS or size not in ("", "tiny"):
        raise ValueError(f"unknown variant {variant!r}: one of {sorted(TASKS)}, optionally with -tiny")
    task, label_key, width, img_size, regress = TASKS[name]
    c = loop_defaults()
    c.task = task
    c.init = ""
    c.regress = {"residual": False, "interpolation": False, "msssim_weight": 0.5, **regress}
    head = {"drop_path": 0.1}
    head.update({"num_classes": width} if task == "segment" else {"out_channels": width})
    c.model.update(preset="base", img_size=img_size, dtype="float32", freeze="none", head=head)
    c.optimizer.b1, c.optimizer.b2, c.optimizer.weight_decay = 0.9, 0.999, 0.05
    c.optimizer.layer_decay = 0.05
    if size == "tiny":
        return _tiny(c, name, task, label_key)
    c.data.update({"source": "dat", "path": "", "task": name, "split": "train", "size": img_size,
                   "label_key": label_key, "augment": True, "num_workers": 4})
    c.batch_size, c.optimizer.accumulate = 2, 2
    steps_per_epoch = TRAIN_IMAGES // c.batch_size
    c.total_steps = EPOCHS * steps_per_epoch
    c.optimizer.warmup_steps = WARMUP_EPOCHS * steps_per_epoch
    c.optimizer.lr = BLR * c.batch_size / 256
    c.log_every, c.checkpoint_every = 50, 2000
    return c


def _tiny(c, name: str, task: str, label_key: str):
    """SFM-tiny (depth 4: the segmentation head taps every depth/4-th block) at 224² on the
    generator's labels, with narrower heads so a step takes well under a second on 2 CPU cores."""
    c.model.update(preset="tiny", depth=4, img_size=224)
    if name in SYNTHETIC_LABELS:
        label_key, classes = SYNTHETIC_LABELS[name]
        c.model.head.update(num_classes=classes, head_channels=32)
    else:
        c.model.head.update(decoder_channels=(64, 32, 16, 16), skip_channels=16)
    c.model.head.drop_path = 0.0
    c.data.update({"source": "synthetic", "num_examples": 512, "dataset_seed": 0, "eval_examples": 64,
                   "label_key": label_key, "augment": True, "num_workers": 0})
    c.total_steps, c.batch_size, c.log_every, c.checkpoint_every = 200, 8, 20, 100
    c.optimizer.lr, c.optimizer.warmup_steps, c.optimizer.layer_decay = 1e-3, 20, 0.75
    return c
