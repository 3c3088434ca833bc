"""Errors the core raises. Each carries a stable ``code`` and, where one applies, the ``param``
(the user-facing field) it concerns, so the service can map it to a 4xx without guessing."""

from __future__ import annotations


class CoreError(Exception):
    code = "core_error"
    #: True when the user's input is at fault (bad checkpoint, dataset, config); False for system faults.
    user_error = True

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param

    def __str__(self) -> str:
        return self.message


class ConfigError(CoreError):
    code = "invalid_config"


class BackboneError(CoreError):
    code = "backbone_error"  # unknown_backbone | weights_missing | weights_invalid


class CheckpointError(CoreError):
    code = "invalid_checkpoint"  # unsafe_pickle | not_a_checkpoint | missing_ctx | bad_rank | ...


class DatasetError(CoreError):
    code = "invalid_dataset"  # path_outside_root | not_found | bad_layout | ...


class NonFiniteLoss(CoreError):
    """The training loss became NaN or infinite (typically a learning rate or loss weight too large
    for the checkpoint): the job fails instead of exporting garbage."""

    code = "non_finite_loss"


class Cancelled(CoreError):
    """Raised by the training loop when ``should_stop()`` returned True."""

    code = "cancelled"
    user_error = False
