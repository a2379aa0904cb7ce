# gat-tune: one image for the API, the migrations and the GPU workers.
# PyPI's Linux torch wheels carry CUDA, so the workers get a CUDA PyTorch from here; the
# NVIDIA container toolkit on the host provides the driver.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 GAT_TUNE_DATA_DIR=/data
WORKDIR /app

ARG TORCH_VERSION=2.13.0
RUN pip install "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY trainer trainer
COPY service service
COPY migrations migrations
RUN pip install .

RUN useradd --create-home --uid 1000 gat && mkdir -p /data && chown gat /data
USER gat
VOLUME /data
EXPOSE 8000
CMD ["gat-tune", "serve", "--host", "0.0.0.0", "--port", "8000"]
