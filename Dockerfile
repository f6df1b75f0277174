# syntax=docker/dockerfile:1
# The image of either operator, for amd64 and arm64, built from the repository root; the
# OPERATOR build argument names the binary (redis-operator by default, or app-operator):
#
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg OPERATOR=redis-operator \
#     -t <registry>/redis-operator:0.1.0 --push .
#
# For kind: `docker build --build-arg OPERATOR=redis-operator -t redis-operator:dev .` and
# `kind load docker-image redis-operator:dev`, then install the chart with
# `--set image.repository=redis-operator,image.tag=dev` (the same for app-operator).
#
# Each platform builds natively (buildx runs the foreign one under emulation): slower than
# cross-compiling, but the same toolchain and C compiler (for ring) on both.

ARG OPERATOR=redis-operator

FROM rust:1.95-bookworm AS build
ARG OPERATOR
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked --bin "$OPERATOR" \
 && install -D "target/release/$OPERATOR" /out/operator

# glibc and CA certificates, no shell, user 65532 (the charts' runAsUser). The binary has one
# name in every image: the operator names itself (its --help, field manager and Lease) in code.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/operator /usr/local/bin/operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/operator"]
