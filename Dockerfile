# syntax=docker/dockerfile:1
# The single `signet` binary in a small runtime image.
#
#   docker build -t signet .                 # runtime: distroless, non-root, no shell
#   docker build -t signet-tools --target tools .   # + a shell, for init jobs
#
# Build stage: the workspace, locked dependencies, release profile.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin signet \
 && install -D -m 0755 target/release/signet /out/signet \
 && mkdir -p /out/state/var/lib/signet /out/state/run/signet/admin

# Init jobs (token, bundle, entries) need a shell: Debian slim + signet.
FROM debian:bookworm-slim AS tools
COPY --from=build /out/signet /usr/local/bin/signet
RUN useradd --system --uid 10001 --home-dir /var/lib/signet signet \
 && install -d -o 10001 -g 10001 /var/lib/signet /run/signet/admin
USER 10001
ENTRYPOINT ["/usr/local/bin/signet"]

# Runtime: glibc, CA certificates, no shell, non-root by default. Named
# volumes mounted on /var/lib/signet and /run/signet/admin start out owned
# by the signet user.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/signet /usr/local/bin/signet
COPY --from=build --chown=10001:10001 /out/state/ /
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/signet"]
CMD ["--help"]
