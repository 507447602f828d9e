# wa-gateway container image.
#
#   docker build -t wa-gateway .
#   docker run -p 8000:8000 -v wa-gateway-data:/var/lib/wa-gateway wa-gateway
#
# Without DATABASE_URL / REDIS_URL / KAFKA_BROKERS the gateway runs on its embedded back ends,
# kept in the DATA_DIR volume. docker-compose.yml runs it with PostgreSQL, Redis and Kafka.
# Every setting is an environment variable: see .env.example.

# ---------------------------------------------------------------------------------------------
# Build stage
# ---------------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder

# Native build tools. The current code only needs the C compiler (SQLite is bundled by sqlx,
# no OpenSSL is linked); cmake, python3 and zlib1g-dev are for librdkafka, which the rdkafka
# crate builds from source (bundled).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential \
        cmake \
        pkg-config \
        python3 \
        zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# 1. Dependencies only. The manifests plus empty stub crates compile every dependency into a
#    layer that is reused until Cargo.toml / Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY producers/Cargo.toml producers/Cargo.toml
COPY consumers/Cargo.toml consumers/Cargo.toml
RUN mkdir -p src producers/src consumers/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs producers/src/lib.rs consumers/src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src producers/src consumers/src

# 2. The real sources. migrations/ (sqlx::migrate!) and kafka/ (include_str! of topics.toml)
#    are embedded at compile time, so they are needed here, not at run time. COPY keeps the
#    files' original mtimes, which may be older than the stub build: touch the crate roots so
#    cargo rebuilds the three workspace crates instead of reusing the stubs.
COPY src src
COPY producers producers
COPY consumers consumers
COPY migrations migrations
COPY kafka kafka
RUN touch src/main.rs src/lib.rs producers/src/lib.rs consumers/src/lib.rs \
    && cargo build --release --locked \
    && strip target/release/wa-gateway

# ---------------------------------------------------------------------------------------------
# Runtime stage
# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

LABEL org.opencontainers.image.title="wa-gateway" \
      org.opencontainers.image.description="Multi-tenant WhatsApp gateway" \
      org.opencontainers.image.licenses="MIT"

# ca-certificates for TLS to external services, curl for the HEALTHCHECK.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# Unprivileged user; DATA_DIR is created (and owned) before VOLUME so a new named volume
# inherits the ownership.
RUN groupadd --system --gid 10001 wagateway \
    && useradd --system --uid 10001 --gid wagateway \
        --home-dir /var/lib/wa-gateway --no-create-home --shell /usr/sbin/nologin wagateway \
    && install -d -o wagateway -g wagateway -m 0750 /var/lib/wa-gateway

COPY --from=builder /app/target/release/wa-gateway /usr/local/bin/wa-gateway

ENV DATA_DIR=/var/lib/wa-gateway \
    HOST=0.0.0.0 \
    PORT=8000

VOLUME ["/var/lib/wa-gateway"]
WORKDIR /var/lib/wa-gateway
USER 10001:10001

EXPOSE 8000

# 200 while the store is reachable (also when only the cache is down), 503 otherwise.
# ${PORT} follows a PORT overridden at run time.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT:-8000}/health" > /dev/null || exit 1

ENTRYPOINT ["wa-gateway"]
CMD ["serve"]
