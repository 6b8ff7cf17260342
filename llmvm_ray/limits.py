"""OpenAI's bounds on sampling fields, shared by the HTTP edge and the engine's own checks.

Both check them: the edge (``protocol``) answers a 400 without a round trip, and the engine
is a standalone API whose callers need not come through HTTP.
"""

MAX_TEMPERATURE = 2.0  # OpenAI's upper bound
MAX_PENALTY = 2.0  # OpenAI's bound on presence / frequency penalties, either sign
MAX_LOGIT_BIAS = 100.0  # OpenAI's bound on a logit_bias value, either sign
MAX_LOGIT_BIAS_TOKENS = 300  # OpenAI's limit on logit_bias entries
MAX_METADATA_KEYS = 16  # OpenAI's bounds on a fine-tune's `metadata`
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
