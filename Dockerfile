# zlpr-serve image: multi-stage. The builder uses the project's own install script and build;
# the runtime has only the shared libraries the two binaries need, and runs as a non-root user.
#
#   docker build -t zlpr-serve .                                   # CPU image (the default)
#   docker run --rm -p 50051:50051 -p 8000:8000 -p 9464:9464 zlpr-serve [--flag=value ...]
#   docker run --rm -e ZLPR_MAX_BATCH_ROWS=64 zlpr-serve           # flags from the environment
# Ports: 50051 gRPC (zlpr.v1 and the Open Inference Protocol), 8000 the Open Inference
# Protocol over HTTP (ZLPR_HTTP_ADDRESS= turns it off), 9464 Prometheus metrics.
#
# CUDA image: the same Debian bases; the builder adds the CUDA 13.0 compiler, headers, CUB and
# static runtime from PyPI (scripts/install-cuda-pip.sh; wheels found in .cuda-wheels/ of the
# build context are installed offline), and the binary links the CUDA runtime statically, so the
# runtime image needs only the driver, which `--gpus all` (the NVIDIA container toolkit) mounts.
# Without a usable GPU it serves on the CPU and says so in its log and in GetServerInfo.
#   docker build -t zlpr-serve:cuda --build-arg ZLPR_CUDA=ON .
#   docker run --rm --gpus all -p 50051:50051 -p 8000:8000 zlpr-serve:cuda
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
RUN if [ "$ZLPR_CUDA" = ON ]; then \
      apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null \
      && scripts/install-cuda-pip.sh /opt/cuda-pip .cuda-wheels; \
    fi
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DZLPR_CUDA=${ZLPR_CUDA} \
      $(if [ "$ZLPR_CUDA" = ON ]; then echo -DCMAKE_CUDA_COMPILER=/opt/cuda-pip/cuda/bin/nvcc; fi) \
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
# The HTTP binding is on in the image; the NVIDIA container toolkit mounts the driver's compute
# libraries for the CUDA image (ignored without it).
ENV ZLPR_HTTP_ADDRESS=0.0.0.0:8000 NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 50051 8000 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/zlpr-cli", "--target=127.0.0.1:50051", "--deadline_ms=2000", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/zlpr-server"]
