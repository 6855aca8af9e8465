# postback-relay container image: build with the Rust toolchain, run from a small
# Debian image as an unprivileged user.
#
#   docker build -t postback-relay .
#   docker run -p 8080:8080 -e POSTBACK_RELAY_SECRET=whsec_... \
#     -v $PWD/rules:/etc/postback-relay/rules:ro -v relay-data:/var/lib/postback-relay \
#     postback-relay
#
# The image carries the production config (deploy/postback-relay.production.toml, as
# /etc/postback-relay/postback-relay.toml): no demo secret (POSTBACK_RELAY_SECRET is
# required), no private networks, the admin API on the container's loopback, and no
# rule file: mount yours on /etc/postback-relay/rules (the examples, all of them
# disabled or demo, are in /usr/share/postback-relay/rules). The queue lives in
# /var/lib/postback-relay: keep it on a volume.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# Built into the binary: the event schema (docs/) and the preview page's example event.
COPY docs ./docs
COPY examples/purchase.json ./examples/purchase.json
RUN cargo build --release --locked --bin postback-relay \
 && strip target/release/postback-relay

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --home-dir /var/lib/postback-relay --shell /usr/sbin/nologin relay \
 && mkdir -p /etc/postback-relay /var/lib/postback-relay \
 && chown relay:relay /var/lib/postback-relay
COPY --from=build /src/target/release/postback-relay /usr/local/bin/postback-relay
COPY deploy/postback-relay.production.toml /etc/postback-relay/postback-relay.toml
COPY rules /usr/share/postback-relay/rules
RUN mkdir -p /etc/postback-relay/rules
USER relay:relay
VOLUME ["/var/lib/postback-relay"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/postback-relay", "health", "--url", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["/usr/local/bin/postback-relay"]
CMD ["serve", "--config", "/etc/postback-relay/postback-relay.toml", \
     "--listen", "0.0.0.0:8080", "--data-dir", "/var/lib/postback-relay", \
     "--log-format", "json"]
