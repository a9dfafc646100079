"""fedsim: a federated and decentralised training simulator.

Flower ClientApps run on long-lived Ray actors; Flower Message-API strategies
aggregate their updates; scripted participation patterns decide which clients
are reachable in each round. Start with ``fedsim run scenarios/quickstart.toml``
and ``fedsim.analysis.load_run``.
"""

__version__ = "0.1.0"
