"""Fine-tunes on Ray Train: the training loop, its supervisor, the service and CLI."""
