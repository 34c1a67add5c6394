# syntax=docker/dockerfile:1
# The scoregate image, for machines that can pull public base images. It has the layout of the
# image `deploy/image/build.sh` builds without any registry (see deploy/README.md): the release
# binary at /usr/local/bin/scoregate (the entrypoint) on a root filesystem assembled by the same
# deploy/image/rootfs.sh from Debian's libc6, libgcc-s1 and ca-certificates; user 65532:65532;
# nothing written outside mounted volumes, so it runs with a read-only root filesystem.
#
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" -t scoregate:0.1.0 .
#
# VERSION must be the workspace version in Cargo.toml (a test checks that it is).

ARG DEBIAN=bookworm
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-${DEBIAN} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin scoregate \
    && cp target/release/scoregate /scoregate

FROM docker.io/library/debian:${DEBIAN}-slim AS rootfs
COPY deploy/image/rootfs.sh /usr/local/bin/rootfs.sh
COPY --from=build /scoregate /scoregate
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rootfs.sh /rootfs /scoregate

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=rootfs /rootfs/ /
COPY --from=rootfs --chown=65532:65532 /rootfs/home/nonroot/ /home/nonroot/
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /home/nonroot
ENTRYPOINT ["/usr/local/bin/scoregate"]
LABEL org.opencontainers.image.title="scoregate" \
      org.opencontainers.image.description="An inference router for Azure ML style online endpoints on Kubernetes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/scoregate/scoregate" \
      org.opencontainers.image.licenses="Apache-2.0"
