"""askbuild's benchmarks: `python -m benchmarks` runs every ``bench_*.py`` and prints the table.

Each ``bench_<topic>.py`` has ``measure(args) -> list[dict]``: one dict per table row (see
``benchmarks/__main__.py`` for the keys).  Benchmarks print numbers; they never fail a build
(the tests assert behaviour, not timings).
"""
