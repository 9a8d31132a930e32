"""`orch` starts here, and `python -m orchestrator` is `orch`."""

import sys


def main() -> None:
    """`orch`: Ctrl-C while the app is still importing (its first few tenths of a second) ends
    it quietly with 130, the code of a run stopped by Ctrl-C, instead of a traceback."""
    try:
        from orchestrator.cli.main import main as orch
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
    orch()


if __name__ == "__main__":
    main()
