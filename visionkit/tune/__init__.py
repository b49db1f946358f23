"""Tuning: the learning-rate range test (`lr_finder`) and Optuna hyper-parameter sweeps (`sweep`)."""
