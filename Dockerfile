# One image for every dtmon stage: producer, processor (Spark local mode), dashboard, and
# `dtmon s3` (moto S3 server). Used by docker-compose.yml.
FROM python:3.11-slim-bookworm

# Java 17 for Spark (Debian's JRE); procps because Spark's launch scripts call ps.
# The man1 directory is needed by the JRE's post-install step on slim images.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYSPARK_PYTHON=/usr/local/bin/python \
    PYSPARK_DRIVER_PYTHON=/usr/local/bin/python

WORKDIR /app

# Dependencies first (cached while only the code changes), then the project itself.
COPY pyproject.toml README.md ./
RUN for p in dtmon producer processor dashboard; do mkdir -p $p && touch $p/__init__.py; done \
 && pip install . \
 && pip uninstall -y dtmon \
 && rm -rf dtmon producer processor dashboard build *.egg-info
COPY dtmon ./dtmon
COPY producer ./producer
COPY processor ./processor
COPY dashboard ./dashboard
COPY schemas ./schemas
RUN pip install --no-deps . && rm -rf build *.egg-info

RUN useradd --create-home --uid 1000 dtmon && mkdir -p /var/lib/dtmon && chown dtmon /var/lib/dtmon
USER dtmon

EXPOSE 5000 5006
CMD ["dtmon", "--help"]
