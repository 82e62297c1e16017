# syntax=docker/dockerfile:1
# superres-pipeline: ONE image family for every node of the docker-compose stack.
#
#   target "airflow" (the default, last stage): api-server, scheduler, dag-processor, triggerer, init
#   target "runtime": Spark master and workers, the notifier, the bucket-init step, offline Picsum
#
# Why the Spark nodes are not the apache/spark image: PySpark requires the driver (which runs
# inside the Airflow scheduler: LocalExecutor, client deploy mode) and the executors' Python
# workers to have the same Python minor version, and the executors also need torch, numpy,
# pillow, pyarrow and this project's `superres` package (the Spark jobs ship closures that import
# it).  The apache/spark 4.x images come with the Ubuntu system Python (not 3.11) and none of
# those packages; adding a second Python, a second torch and the project to them would duplicate
# everything below and could drift.  Building the Spark nodes from the same stage as Airflow
# guarantees identical Python, pyspark (with its jars and spark-class), torch and project code
# on every node.
#
# Build:   docker compose build            (reads TORCH_INDEX_URL from .env)
# GPU:     TORCH_INDEX_URL=https://pypi.org/simple  -> the CUDA build of torch (several GB)

# Pinned: Airflow 3.3.2 on Python 3.11, the versions requirements.txt was resolved for.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11

FROM ${AIRFLOW_IMAGE} AS base

# A Java runtime for Spark (driver JVM in the scheduler, master/worker/executor JVMs).
USER root
ARG TARGETARCH=amd64
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && apt-get autoremove -yqq --purge \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-${TARGETARCH}

# The project lives at /opt/superres (dags/, spark_jobs/, include/models/ are found relative to
# the package), and /opt/superres/staging is the Spark staging directory: the compose stack
# mounts one shared volume there on every Spark node (a new volume copies this owner).
# The other directories are mount points of the stack's named volumes, created here so that
# the volumes belong to the airflow user.
RUN mkdir -p /opt/superres/staging /opt/superres/notifier-data /opt/airflow/auth \
    && chown -R airflow:0 /opt/superres /opt/airflow/auth \
    && chmod -R g+rwX /opt/superres /opt/airflow/auth
USER airflow
WORKDIR /opt/superres

# torch first and pinned exactly, from a CPU-only index by default, so that nothing pulls the
# multi-GB CUDA build; then the pinned requirements (apache-airflow==3.3.2 among them, so pip
# never moves Airflow away from the base image's version).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY --chown=airflow:0 requirements.txt /opt/superres/requirements.txt
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
    && pip install --no-cache-dir -r /opt/superres/requirements.txt

# The project, installed in editable mode exactly as `make` does in .venv.
COPY --chown=airflow:0 . /opt/superres
RUN pip install --no-cache-dir --no-deps -e /opt/superres \
    && python -c "import superres, pyspark, torch; print('superres image ok:', torch.__version__)" \
    && command -v spark-submit && command -v spark-class

ENV PYTHONUNBUFFERED=1 \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/superres/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/superres/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    SUPERRES_STAGING_URI=/opt/superres/staging \
    PYSPARK_PYTHON=python3 \
    PYSPARK_DRIVER_PYTHON=python3

# Spark nodes and plain Python services: no Airflow entrypoint (which would prefix `airflow`).
FROM base AS runtime
ENTRYPOINT ["/usr/bin/dumb-init", "--"]
CMD ["python", "-c", "import superres; print('superres runtime image')"]

# Airflow components (the base image's /entrypoint: waits for the DB, runs `airflow <command>`).
FROM base AS airflow
