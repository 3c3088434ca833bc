"""The method: objectives, the SGD schedule, training loops and recovery for prompts, heads and MMA adapters."""
