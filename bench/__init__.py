"""The trading-day benchmark (``make bench``): ``python -m bench.run``.

``workload`` generates a deterministic trading day of state, ``naive`` is the seed-style
baseline (one folder of gzip'ed indented JSON per backup), ``run`` times both against the
same day and writes ``bench/results/<UTC timestamp>.json`` and ``bench/results/latest.json``.
"""
