"""llmvm-ray: a Ray-native LLM virtual machine.

Nothing is imported or loaded here on purpose: importing the package must stay free.
"""

__version__ = "0.1.0"
