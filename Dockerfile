# Multi-stage: build wheels with the compiler toolchain, run on a slim image as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY rivulet_cli ./rivulet_cli
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 rivulet
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
USER rivulet
WORKDIR /home/rivulet
EXPOSE 8080
ENTRYPOINT ["rivulet"]
CMD ["gateway"]
