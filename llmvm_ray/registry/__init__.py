"""The fine-tune registry: a named, detached, restartable actor over a durable store."""
