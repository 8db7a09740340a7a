"""``leap train``: config, the training loop, distributed setup, checkpoints, optimizer and schedule."""
