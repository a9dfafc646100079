"""A fedsim scenario on a real Flower federation: ``fedsim export`` writes a Flower app
project whose ServerApp runs fedsim's session on Flower's grid and whose ClientApp is
fedsim's, each SuperNode serving one partition.

- :mod:`fedsim.deployment.run_config`: the scenario as a Flower run config, and back;
- :mod:`fedsim.deployment.server`: the ServerApp's work (what a deployment lacks, got
  from the grid and the run config, or refused);
- :mod:`fedsim.deployment.client`: the ClientApp on a SuperNode (its partition's data);
- :mod:`fedsim.deployment.export`: the project written to disk.

docs/flower-deployment.md shows the whole path.
"""
