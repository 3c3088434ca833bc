"""MergeTune core: the method, the checkpoint files, the data and the evaluation, with no service code.

Floors, bottom up: ``config``/``errors``; ``builtin``, ``data``, ``checkpoints``, ``model``; ``evaluation``;
``method``. A package imports only from its own floor or below. Importing ``mergetune.core`` or
``mergetune.core.config`` does not import torch.
"""
