"""flowvi's benchmarks: each module is a script run from the repository root as
``python -m benchmarks.NAME`` (``--help`` for its options); records go to
``benchmarks/results/NAME.jsonl`` and the tables to ``benchmarks/RESULTS.md``."""
