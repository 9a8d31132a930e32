# The trainer image: what one trial needs to run `python -m trainer` (the orchestrator stays on
# the host). On the GPU workstation the base is an official CUDA PyTorch image; elsewhere pass
# another one, e.g. a registry-free Debian + Python base with torch already installed:
#   orch build --base-image orch-local/python:3.11-torch
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

# The trainer's own dependencies (pyproject.toml lists the orchestrator's too). torch and numpy
# are ranges a PyTorch base already satisfies, so pip keeps its build instead of pulling another
# (and, with everything satisfied, needs no network at all).
ARG TRAINER_REQUIREMENTS="torch>=2.4 numpy tokenizers>=0.19 pydantic>=2.6 pyyaml>=6 wandb>=0.17"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONPATH=/opt/orch \
    HOME=/tmp

# Dependencies first: this layer is rebuilt only when the list or the base changes, not when
# the trainer's source does. A bare Debian base has only `python3`: give it `python` too.
RUN set -eu; \
    command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python; \
    python -m pip install $TRAINER_REQUIREMENTS; \
    python -c "import torch, tokenizers, pydantic, yaml, numpy, wandb"

# A non-root default user. orch runs trials as the invoking uid:gid instead (files in the run
# dir stay the user's), which need not exist in /etc/passwd: HOME=/tmp is writable for any uid.
RUN set -eu; \
    if command -v useradd >/dev/null; then useradd --uid 1000 --create-home trainer; \
    else echo 'trainer:x:1000:1000::/home/trainer:/bin/sh' >>/etc/passwd; \
         echo 'trainer:x:1000:' >>/etc/group; mkdir -p /home/trainer; \
         chown 1000:1000 /home/trainer; fi

WORKDIR /opt/orch
COPY trainer/ /opt/orch/trainer/
USER trainer
CMD ["python", "-m", "trainer", "--help"]
