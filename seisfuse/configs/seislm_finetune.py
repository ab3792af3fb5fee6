"""SeisLM fine-tuning: phase picking (`pick`) and event classification (`classify`).

Variants: pick, classify (SeisLM-base), append `-tiny` for a CPU-sized run on synthetic records.
The full variants follow seisLM/configs/phasepick/*_seisLM*.json and
foreshock_aftershock/seisLM_base_shock_classifier.json as far as this package records them
(batch, lr and epochs are stated below; check them against the original before comparing runs).

    seisfuse finetune --config seislm_finetune:pick-tiny --workdir runs/pick-tiny
    seisfuse finetune --config seislm_finetune:pick --workdir runs/pick \
        --init converted/seislm-base --config.data.path=DATA/ETHZ
    seisfuse evaluate runs/pick-tiny
    seisfuse pick day/*.mseed --run runs/pick-tiny --out picks.csv

Keys: model.preset (+ any Wav2Vec2Config field), model.head (picker: dropout, use_weighted_layer_sum;
classifier: num_classes, classifier_proj_size, ...), model.freeze = none | feature_encoder | base,
optimizer.unfreeze_step = N (the trunk trains from step N on: SeisLM's "unfreeze the base at epoch
N"), init = a `seisfuse convert` folder or a SeisLM run of `seisfuse train`; data.label_key = the class
label for `classify` (synthetic records: distance_class, magnitude_class; a record table's `label`
column for data.source=pick_table).
"""

from seisfuse.data.transforms import WINDOW
from seisfuse.train.config import loop_defaults


def get_config(variant: str = "pick-tiny"):
    name, _, size = variant.partition("-")
    if name not in ("pick", "classify") or size not in ("", "tiny"):
        raise ValueError(f"unknown variant {variant!r}: pick or classify, optionally with -tiny")
    c = loop_defaults()
    c.task = name
    c.init = ""
    c.num_samples = WINDOW
    head = {} if name == "pick" else {"num_classes": 4}
    c.model.update({"preset": "seislm-base", "dtype": "float32", "freeze": "feature_encoder", "head": head})
    c.optimizer.b1, c.optimizer.b2, c.optimizer.weight_decay = 0.9, 0.999, 0.01
    if size == "tiny":
        c.model.preset = "tiny"
        c.model.freeze = "none"
        if name == "classify":
            c.model.head.classifier_proj_size = 32
        c.data.update({"source": "synthetic", "num_examples": 512, "dataset_seed": 0, "eval_examples": 64,
                       "label_key": "distance_class" if name == "classify" else None, "augment": True,
                       "num_workers": 0})
        c.total_steps, c.batch_size, c.log_every, c.checkpoint_every = 200, 8, 20, 100
        c.optimizer.lr, c.optimizer.warmup_steps = 1e-3, 20
        return c
    if name == "pick":
        c.data.update({"source": "seisbench", "path": "", "split": "train", "augment": True, "num_workers": 4,
                       "label_key": None})
    else:  # event classes from a table of records (file,p_time,s_time,label), e.g. Norcia's
        c.data.update({"source": "pick_table", "path": "", "eval_path": "", "augment": False,
                       "num_workers": 4, "label_key": "label"})
    c.batch_size = 32
    c.total_steps, c.optimizer.warmup_steps = 30_000, 1500
    c.optimizer.lr = 1e-4
    c.optimizer.unfreeze_step = 3000
    c.log_every, c.checkpoint_every = 50, 2000
    return c
