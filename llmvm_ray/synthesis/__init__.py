"""Data synthesis: the teacher writes more training examples for a task than users send.

Flow (one way): seeds → k-shot prompt (``templates``) → teacher (``engine.teacher``) →
parse (``encoding``) → validate (``records``) → dedup (``dedup``) → store. ``synthesizer``
runs one teacher request end to end with capped retries; ``run`` drives requests until a
target is reached or the attempt budget is spent, accounting every step (``accounting``);
``workers`` spreads requests over Ray actors under a rate limit (``ratelimit``); ``job``
is the resumable batch run behind ``jobs/synthesize.py`` and ``llmvm synth run``;
``for_task`` is what the optimizer calls for ``data_synthesis: true``.
"""
