"""UniFormerV2 backbone with LEAP's action-program heads and losses (see leap.py for ``model_args``)."""

from leap_cli.model.leap import LeapModel, build_model
from leap_cli.model.losses import leap_loss
from leap_cli.model.uniformerv2 import LoadReport, load_pretrained

__all__ = ["LeapModel", "LoadReport", "build_model", "leap_loss", "load_pretrained"]
