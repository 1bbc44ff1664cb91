"""Training and evaluation of task models: `python -m training.train`, `python -m training.eval`."""
