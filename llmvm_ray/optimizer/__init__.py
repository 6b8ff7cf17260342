"""The distillation loop: task keys, routing, recording, triggers, the quality gate,
promotion, shadow sampling and rollback."""
