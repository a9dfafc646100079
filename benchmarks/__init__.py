"""fedsim's performance benchmark: the same training three ways, timed in one session.

A plain sequential PyTorch loop (the floor), fedsim's Ray engine and Flower's own
simulation runtime run the same scenario (same model, data store, minibatch stream, SGD
and FedAvg aggregation); :mod:`benchmarks.run` alternates them over repetitions and
reports medians, ratios to the floor, start-up, peak memory and a one-round profile.
Results and the command are in docs/benchmarks.md.
"""
