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
 && install -d -m 0755 /out/state

# Init jobs (token, bundle, entries) need a shell: Debian slim + signet.
FROM debian:bookworm-slim AS tools
COPY --from=build /out/signet /usr/local/bin/signet
RUN useradd --system --uid 10001 --home-dir /var/lib/signet signet \
 && install -d -o 10001 -g 10001 /var/lib/signet /run/signet/admin /run/signet/bootstrap
USER 10001
ENTRYPOINT ["/usr/local/bin/signet"]

# Runtime: glibc, CA certificates, no shell, non-root by default. A fresh
# named volume takes the owner of the image directory it is mounted on, so
# volumes on /var/lib/signet, /run/signet/admin and /run/signet/bootstrap
# start out owned by the signet user (in both images: whichever container
# is created first sets it). One COPY per directory: copying a tree onto /
# would also chown /var and /run with the classic builder.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/signet /usr/local/bin/signet
COPY --from=build --chown=10001:10001 /out/state /var/lib/signet
COPY --from=build --chown=10001:10001 /out/state /run/signet/admin
COPY --from=build --chown=10001:10001 /out/state /run/signet/bootstrap
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/signet"]
CMD ["--help"]
