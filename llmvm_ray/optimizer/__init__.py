"""The distillation loop, and nothing of HTTP: the optimizer actor (``actor``) with each
task's state (``state``), what makes a task (``task``), scoring for the gate and shadow checks
(``scoring``) and synthesis for a task (``synthesis``). The request path that asks it who
answers runs in the ingress (``serve/optimizing.py``)."""
