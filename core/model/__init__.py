"""The frozen CLIP and what we put into it: backbone, prompt learners, linear heads, MMA adapters, features."""
