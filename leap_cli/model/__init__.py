"""UniFormerV2 backbone with LEAP's action-program heads and losses (see leap.py for ``model_args``)."""

from leap_cli.model.leap import LeapModel, build_model
from leap_cli.model.losses import leap_loss

__all__ = ["LeapModel", "build_model", "leap_loss"]
