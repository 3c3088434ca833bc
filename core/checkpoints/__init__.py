"""Checkpoint files: reading torch.save files without torch (safe_pickle) in a sandbox, ingesting and exporting them."""
