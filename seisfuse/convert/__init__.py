"""Torch-free import/export of the released PyTorch SFM and SeisLM weights, pretrained and fine-tuned."""

from seisfuse.convert.common import load_converted, save_converted
from seisfuse.convert.seislm import export_seislm, export_seislm_finetuned, load_seislm, load_seislm_finetuned
from seisfuse.convert.sfm import export_sfm, export_sfm_finetuned, load_sfm, load_sfm_finetuned
from seisfuse.convert.torch_format import CheckpointError, read_torch_checkpoint, write_torch_checkpoint

__all__ = [
    "CheckpointError", "export_seislm", "export_seislm_finetuned", "export_sfm", "export_sfm_finetuned",
    "load_converted", "load_seislm", "load_seislm_finetuned", "load_sfm", "load_sfm_finetuned",
    "read_torch_checkpoint", "save_converted", "write_torch_checkpoint",
]
