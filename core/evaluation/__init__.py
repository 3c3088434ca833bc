"""Evaluation: metrics and interpolation curves, the typed result, the report, sweep tables and cross-dataset runs."""
