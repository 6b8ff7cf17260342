"""The agents' evaluation suite: a knowledge-tool server built from the compositional
celebrities data, decision-step data and step models, and the scoring runner."""
