# One image for all four services; compose picks the service with the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 ARC_HOME=/arc
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/arc
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY gen ./gen
COPY arc_common ./arc_common
COPY services ./services
COPY clients ./clients
RUN pip install --no-cache-dir -e .
VOLUME ["/arc"]
EXPOSE 50051 50052 50053 50054
CMD ["arc-scheduler", "--host", "0.0.0.0"]
