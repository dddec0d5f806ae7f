# zlpr-serve image: multi-stage. The builder uses the project's own install script and build;
# the runtime has only the shared libraries the two binaries need, and runs as a non-root user.
#
#   docker build -t zlpr-serve .                                   # CPU image (the default)
#   docker run --rm -p 50051:50051 -p 9464:9464 zlpr-serve [--flag=value ...]
#   docker run --rm -e ZLPR_MAX_BATCH_ROWS=64 zlpr-serve           # flags from the environment
#
# CUDA image: a builder base that brings nvcc 13 and the same packages (e.g. NVIDIA's
# nvidia/cuda:13.0.0-devel-ubuntu24.04, whose Ubuntu 24.04 packages have the names
# install-deps.sh uses) and a runtime base with the CUDA runtime (nvidia/cuda:13.0.0-runtime-ubuntu24.04):
#   docker build -t zlpr-serve:cuda --build-arg ZLPR_CUDA=ON \
#     --build-arg BUILDER_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu24.04 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04 .
#   docker run --rm --gpus all -p 50051:50051 zlpr-serve:cuda --backend=cuda
ARG BUILDER_IMAGE=debian:bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS builder
ARG ZLPR_CUDA=OFF
ARG ZLPR_CUDA_ARCHITECTURES="80;90"
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh --build
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DZLPR_CUDA=${ZLPR_CUDA} \
      -DCMAKE_CUDA_ARCHITECTURES="${ZLPR_CUDA_ARCHITECTURES}" -DZLPR_BUILD_BENCH=OFF \
 && cmake --build /build --target zlpr-server zlpr-cli \
 && strip /build/server/zlpr-server /build/cli/zlpr-cli

FROM ${RUNTIME_IMAGE}
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 libprometheus-cpp-pull1.0 \
      libprometheus-cpp-core1.0 libcivetweb1 libhwy1 libre2-9 libc-ares2 libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin zlpr
COPY --from=builder /build/server/zlpr-server /build/cli/zlpr-cli /usr/local/bin/
USER 10001
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/zlpr-cli", "--target=127.0.0.1:50051", "--deadline_ms=2000", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/zlpr-server"]
