"""Agents (REBEL, backward chaining, FLAT) that answer questions with HTTP tools, every
model call going through one small interface (``model.AgentModel``) whose production
implementation is the optimizing completion path, so each decision step is a task the
optimizer can distill. See ``api.py`` for the Python entry points."""
