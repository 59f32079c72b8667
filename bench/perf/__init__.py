"""Building blocks of `bench/run_all.py`: processes, load generation, Redis counting, report."""
