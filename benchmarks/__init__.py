"""Throughput and memory benchmarks of mtlkit; results in ``benchmarks/RESULTS.md``.

``python -m benchmarks {synth,models,data,trainer,meters,all} [--quick]`` (see ``benchmarks/__main__.py``): each
subcommand replaces its own section of RESULTS.md. Timings are measured here, never asserted in tests.
"""
