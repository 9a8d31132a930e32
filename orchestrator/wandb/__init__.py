"""The W&B wing: the cloud boundary (cloud.py), the sweep config sent to it (sweep_config.py),
runs read back from it (run_import.py), the backend that drives it, and the agents that serve it."""
