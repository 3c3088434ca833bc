"""MergeTune core: the algorithm (prompt learner, objectives, training loop, evaluation, I/O).

Pure modules plus one training loop. Never imports the web, database or queue layers.
Importing ``core`` or ``core.config`` does not import torch.
"""
