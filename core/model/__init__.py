"""The frozen CLIP and what we put into it: backbone and weights, prompt learners, linear heads, MMA adapters, cached features."""
