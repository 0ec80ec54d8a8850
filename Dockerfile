# One image with every binary of the workspace (ingest, aggregator, billing, api).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir -p /out \
 && for b in ingest aggregator billing api; do [ -f target/release/$b ] && cp target/release/$b /out/ || true; done

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 metering
COPY --from=build /out/ /usr/local/bin/
USER metering
ENV RUST_LOG=info
