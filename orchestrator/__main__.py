"""`python -m orchestrator` is `orch`."""

from orchestrator.cli import app

if __name__ == "__main__":
    app(prog_name="orch")
