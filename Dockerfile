# charnet serve: an OpenAI-compatible server for charnet checkpoints, on CPU.
#   docker build -t charnet . && docker run -p 8000:8000 -v ./checkpoints:/checkpoints charnet
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# The CPU build of torch first: a bare `torch` requirement would pull the multi-GB CUDA one.
RUN pip install torch --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY charnet ./charnet
COPY corpora ./corpora
RUN pip install .

# Checkpoints come from a volume; one model per directory under it.
VOLUME ["/checkpoints"]
ENV CHARNET_CHECKPOINTS=/checkpoints
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"

ENTRYPOINT ["charnet"]
CMD ["serve", "/checkpoints", "--host", "0.0.0.0", "--port", "8000"]
