# langdock-budget container: `docker run` line and volumes in docs/OPERATIONS.md.
FROM python:3.11-slim AS build
# extras to install, if any (`import` is kept as an empty alias: polars is a dependency)
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/langdock-budget \
      --shell /usr/sbin/nologin langdock \
 && mkdir -p /var/lib/langdock-budget /etc/langdock-budget \
 && chown langdock:langdock /var/lib/langdock-budget \
 && chmod 0700 /var/lib/langdock-budget
COPY --from=build /opt/venv /opt/venv
COPY alert_rules /etc/langdock-budget/alert_rules
COPY config.example.yaml /etc/langdock-budget/config.example.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LANGDOCK_BUDGET_LOG_FORMAT=json \
    LANGDOCK_BUDGET_CONFIG=/etc/langdock-budget/config.yaml
USER 10001:10001
WORKDIR /var/lib/langdock-budget
VOLUME ["/var/lib/langdock-budget"]
EXPOSE 9464
# 200 while the last successful fetch is fresh (3 poll intervals); the start period covers
# the first cycle (its coarse backfill takes one to two minutes at the default pace).
HEALTHCHECK --interval=60s --timeout=5s --start-period=3m --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["langdock-budget"]
CMD ["run"]
