# syntax=docker/dockerfile:1
# The redis-operator image, for amd64 and arm64, built from the repository root:
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -f operators/redis/Dockerfile -t <registry>/redis-operator:0.1.0 --push .
#
# For kind: `docker build -f operators/redis/Dockerfile -t redis-operator:dev .` and
# `kind load docker-image redis-operator:dev`, then install the chart with
# `--set image.repository=redis-operator,image.tag=dev`.
#
# Each platform builds natively (buildx runs the foreign one under emulation): slower than
# cross-compiling, but the same toolchain and C compiler (for ring) on both.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked --bin redis-operator \
 && install -D target/release/redis-operator /out/redis-operator

# glibc and CA certificates, no shell, user 65532 (the chart's runAsUser).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/redis-operator /usr/local/bin/redis-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/redis-operator"]
