"""Scoring: BLEU conventions, significance tests, TER, calibration, frequency splits."""
