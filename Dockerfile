# Rivulet image: one image, one `rivulet` entrypoint; the service is the first argument
# (`gateway` by default; `normalizer`, `writer`, `profiler`, or any operator command such as
# `status` or `dlq list logs`). Built by compose.yaml and used by deploy/kubernetes (image name
# `rivulet`).
#
# Multi-stage: dependencies and the project are installed into a virtualenv in a build stage with
# a compiler toolchain (for any dependency without a wheel for the platform); the runtime stage
# gets that virtualenv only, on python:3.11-slim, running as an unprivileged user.
#
# Small: the in-process ClickHouse engine (chdb, with pandas and pyarrow, ~800 MB) is left out.
# Containers talk to a ClickHouse server (RIVULET_CLICKHOUSE_URL=http(s)://...); nothing imports
# chdb unless the URL is chdb:/// (tests/unit/test_deploy.py checks that the services import
# without it). A chdb:/// URL in this image fails at the first insert: use a server.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/rivulet
ENV PATH=/opt/rivulet/bin:$PATH
WORKDIR /src

# Dependencies first (a layer that survives source edits): pyproject's list minus chdb.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('requirements.txt', 'w').write('\n'.join(d for d in deps if not d.lower().startswith('chdb')) + '\n')" \
    && pip install -r requirements.txt

# setup.py compiles the hot path with mypyc (build-essential is in this stage): the runtime stage
# gets the compiled modules in the virtualenv.
COPY README.md setup.py ./
COPY shared ./shared
COPY services ./services
COPY rivulet_cli ./rivulet_cli
RUN pip install --no-deps . \
    && python -m compileall -q /opt/rivulet/lib
# Package data the wheel does not carry (pyproject declares no package-data): the browser RUM
# script served by the gateway. Copied next to the installed package (`python -I`: the installed
# one, not ./services).
RUN cp -r services/gateway/static \
    "$(python -I -c 'import pathlib, services.gateway as g; print(pathlib.Path(g.__file__).parent)')/"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/rivulet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --gid 10001 rivulet \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /home/rivulet --shell /usr/sbin/nologin rivulet \
    && mkdir -p /home/rivulet \
    && chown rivulet:rivulet /home/rivulet
COPY --from=build /opt/rivulet /opt/rivulet
USER 10001:10001
WORKDIR /home/rivulet
# gateway HTTP (RIVULET_HTTP_PORT), worker metrics (RIVULET_METRICS_PORT), profiler reports
EXPOSE 8080 9464 8125
# Exec form: `rivulet` is PID 1 and receives SIGTERM itself (workers finish the batch in hand,
# acknowledge it and exit; the gateway drains open requests for up to 10 s).
ENTRYPOINT ["rivulet"]
CMD ["gateway"]
