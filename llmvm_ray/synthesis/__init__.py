"""Data synthesis: the teacher writes more training examples for a task than users send.

Flow (one way): seeds → k-shot prompt (``templates``) → teacher (``llmvm_ray.teachers``) →
parse (``encoding``) → validate (``records``) → dedup (``dedup``) → store. ``synthesizer``
runs one teacher request end to end with capped retries; ``run`` drives requests until a
target is reached or the attempt budget is spent, accounting every step (``accounting``);
``workers`` spreads requests over Ray actors under a rate limit (``ratelimit``); ``job``
is the resumable batch run behind ``jobs/synthesize.py`` and ``llmvm synth run``. What
synthesizes for one optimizer task (``data_synthesis: true``) is the optimizer's
(``optimizer/synthesis.py``): this package knows nothing of tasks or the optimizer.
"""
