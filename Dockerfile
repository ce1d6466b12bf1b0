# One image for every dtmon stage -- producer, processor (the Spark driver), dashboard,
# `dtmon s3` (moto S3 server) -- and for docker-compose.yml's spark-worker, whose executors
# run our Python code (the dtmon-kafka data source, the mapInArrow histograms).
#
# Built FROM the official Apache Spark image (python3 variant), so the driver and the
# executors share one Spark and one Python minor version, which PySpark requires;
# spark-master runs that official image unchanged. SPARK_VERSION is both the image tag and
# the pip pyspark pin: tests/test_compose.py checks that they and spark-master's image agree.
# Spark >= 4.2 is needed (processor.kafka_source uses the 4.2 admission-control API).
# The image ships Ubuntu 22.04's Python 3.10 (python3, no `python`) without numpy/pyarrow/pandas;
# pip resolves our dependencies for 3.10.
ARG SPARK_VERSION=4.2.0
FROM apache/spark:${SPARK_VERSION}-scala2.13-java21-python3-ubuntu
ARG SPARK_VERSION

USER root

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYSPARK_PYTHON=/usr/bin/python3 \
    PYSPARK_DRIVER_PYTHON=/usr/bin/python3

WORKDIR /app

# Dependencies first (cached while only the code changes), then the project itself.
# pyspark is pinned to the image's Spark; with SPARK_HOME=/opt/spark (set by the image) the
# driver launches the image's own spark-submit and jars.
COPY pyproject.toml README.md ./
RUN for p in dtmon producer processor dashboard; do mkdir -p $p && touch $p/__init__.py; done \
 && python3 -m pip install "pyspark==${SPARK_VERSION}" . \
 && python3 -m pip uninstall -y dtmon \
 && rm -rf dtmon producer processor dashboard build *.egg-info
COPY dtmon ./dtmon
COPY producer ./producer
COPY processor ./processor
COPY dashboard ./dashboard
COPY schemas ./schemas
RUN python3 -m pip install --no-deps . && rm -rf build *.egg-info

# Run as the image's own `spark` user (uid 185): it owns /opt/spark, where the worker keeps
# its work directory. /var/lib/dtmon holds the processor's checkpoint volume.
RUN mkdir -p /var/lib/dtmon && chown spark:spark /var/lib/dtmon
USER spark

# The image's /opt/entrypoint.sh stays the entrypoint: any command that is not the
# Kubernetes `driver`/`executor` keyword is run as given.
EXPOSE 5000 5006
CMD ["dtmon", "--help"]
