"""The data side of a run: data sets (built-in generators and loaders of real formats),
partitions across clients, and the memory-mapped per-client store the clients read."""
