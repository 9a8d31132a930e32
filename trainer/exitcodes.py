"""Exit codes of `python -m trainer`: part of the contract the orchestrator reads."""

FINISHED = 0
CRASHED = 1  # an unexpected exception: status `failed`
BAD_INPUT = 2  # invalid config or data: nothing was trained
DIVERGED = 3  # a NaN or inf loss: status `diverged`
OOM = 5  # out of memory: status `failed`, reason `oom`
STOPPED_SIGINT = 130  # 128 + SIGINT: status `stopped`
STOPPED_SIGTERM = 143  # 128 + SIGTERM: status `stopped`
