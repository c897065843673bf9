# Two images from one file:
#   docker build --target serve -t protege:serve .   # ingestion, scorer, verifier, teacher, harvester (no torch)
#   docker build --target train -t protege:train .   # the trainer (adds torch, transformers, the backbone)
# For the scorer on NVIDIA GPUs: --build-arg ORT="onnxruntime-gpu[cuda,cudnn]==1.23.2" (the extras bring
# NVIDIA's CUDA 12 and cuDNN 9 wheels, which python:3.11-slim lacks; the runtime preloads them).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PROTEGE_HOME=/var/lib/protege PROTEGE_TASKS_DIR=/app/tasks PROTEGE_LOG_FORMAT=json
RUN useradd --uid 10001 --create-home protege && mkdir -p /var/lib/protege && chown protege /var/lib/protege
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protege ./protege
COPY services ./services
COPY schemas ./schemas
COPY tasks ./tasks

FROM base AS serve
ARG ORT=""
RUN pip install ".[monitor]" && if [ -n "$ORT" ]; then pip uninstall -y onnxruntime && pip install "$ORT"; fi
USER 10001
ENTRYPOINT ["protege"]

FROM base AS train
RUN pip install ".[train]"
USER 10001
ENTRYPOINT ["protege"]
CMD ["run", "trainer"]
