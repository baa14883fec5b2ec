"""Ready-made runner programs: host tools on any machine that can reach the broker.

- :mod:`runners.fs` — read-only filesystem inspection of one directory
  (``python -m runners.fs --root DIR``).
"""
