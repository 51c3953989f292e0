"""Benchmarks of the engine against a hand-written floor (issue 7): `python -m bench.run`."""
