"""Training: clip sampling from prepared volumes, prompt simulation, and the training loop."""
