"""What ``llmvm dev`` and ``llmvm demo`` run on: tiny offline models, checkable tasks, the
student recipe. Product code (the CLI ships it); test-only stubs live in ``tests/support``.
"""
