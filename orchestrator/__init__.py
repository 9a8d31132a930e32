"""orch: sweeps of the trainer (or any program honouring its contract) on one machine."""
