# The bot on an NVIDIA host: docker compose --profile gpu up -d (see compose.yaml and the README, "Docker").
# The host needs the NVIDIA driver (580 or newer) and the NVIDIA Container Toolkit; PyTorch's wheel brings the
# CUDA runtime. On a host without a GPU (--profile cpu) TORCH_INDEX_URL names PyTorch's CPU wheels instead: the
# same release, a tenth of the download.
FROM python:3.12-slim
ARG TORCH_INDEX_URL=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data/huggingface \
    DATABASE_PATH=/data/bot.sqlite3 \
    METRICS_HOST=0.0.0.0

WORKDIR /app
# Triton (it comes with PyTorch's CUDA wheel) compiles a small launcher for our paged-attention kernel with a
# C compiler at first use; the slim image has none. Python's headers are part of this image already.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# Every package at the version constraints.txt pins (scripts/lock.sh; the tests run the same versions): PyTorch's
# CUDA 13.0 build from PyPI, which needs NVIDIA driver 580 or newer on the host.
COPY constraints.txt ./
# PyTorch first, in its own layer: the largest download, and the one that changes least.
RUN pip install --no-cache-dir -c constraints.txt ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch
COPY pyproject.toml README.md LICENSE ./
COPY bot ./bot
COPY cogs ./cogs
COPY inference ./inference
RUN pip install --no-cache-dir -c constraints.txt .

# The model cache and the bot's database live in /data, a volume that outlives the container.
RUN useradd --create-home --uid 1000 bot && mkdir -p /data && chown bot /data
USER bot
VOLUME /data
EXPOSE 9108

# Settings, token shape and model download; the device is left out because the running bot holds it.
HEALTHCHECK --interval=5m --timeout=60s --start-period=30m CMD ["phi3v-bot", "--check", "--no-device"]
ENTRYPOINT ["phi3v-bot"]
