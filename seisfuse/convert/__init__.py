"""Torch-free import/export of the released PyTorch SFM and SeisLM weights."""

from seisfuse.convert.common import load_converted, save_converted
from seisfuse.convert.seislm import export_seislm, load_seislm
from seisfuse.convert.sfm import export_sfm, load_sfm
from seisfuse.convert.torch_format import CheckpointError, read_torch_checkpoint, write_torch_checkpoint

__all__ = ["CheckpointError", "export_seislm", "export_sfm", "load_converted", "load_seislm", "load_sfm",
           "read_torch_checkpoint", "save_converted", "write_torch_checkpoint"]
