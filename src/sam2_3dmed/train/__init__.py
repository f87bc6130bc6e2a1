"""Training: clip sampling from prepared volumes (dataset.py) and the trainer as hooks (trainer.py)."""
