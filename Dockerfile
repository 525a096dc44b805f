# One image for both roles: `fluidity server` (the default command) or `fluidity agent`, chosen by the command.
#
#   docker build -t fluidity .        # or: podman build --format docker -t fluidity .
#
# Stages:
#   build    the official Rust image; makes a fully static musl binary for the platform being built
#            (x86_64-unknown-linux-musl on amd64, aarch64-unknown-linux-musl on arm64) at /fluidity
#   binary   where the runtime stage takes /fluidity from; a plain build uses the build stage
#   runtime  FROM scratch: the binary, one passwd line for UID 65532 and an empty /etc/fluidity/certs owned by it,
#            nothing else (the final stage)
#
# Without a registry, the runtime stage is built from a binary made on the host by replacing the `binary` stage
# with a folder that holds `fluidity` (the build stage is then skipped):
#
#   CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target x86_64-unknown-linux-musl
#   mkdir -p dist && cp target/x86_64-unknown-linux-musl/release/fluidity dist/
#   podman build --format docker --build-context binary=dist -t fluidity .
#   (Docker 23 or later, BuildKit: docker build --build-context binary=dist -t fluidity .)
#
# The docker format keeps HEALTHCHECK, which the OCI image format has no field for.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION} AS build
# Set by BuildKit and buildah to the platform being built; dpkg answers for other builders.
ARG TARGETARCH
# ring and mimalloc compile C: musl-gcc builds it against musl. Not pinned: the Debian release of the Rust image
# fixes the version, and a pinned one disappears from the archive at the next point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
RUN arch="${TARGETARCH:-$(dpkg --print-architecture)}" \
    && case "$arch" in \
         amd64) target=x86_64-unknown-linux-musl ;; \
         arm64) target=aarch64-unknown-linux-musl ;; \
         *) echo "no musl target for architecture $arch" >&2; exit 1 ;; \
       esac \
    && rustup target add "$target" \
    && echo "$target" > /musl-target
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN target="$(cat /musl-target)" \
    && CC_x86_64_unknown_linux_musl=musl-gcc CC_aarch64_unknown_linux_musl=musl-gcc \
       cargo build --release --locked --target "$target" \
    && cp "target/$target/release/fluidity" /fluidity

FROM build AS binary

FROM scratch AS runtime
COPY --from=binary /fluidity /fluidity
COPY deploy/container/passwd /etc/passwd
# An empty folder owned by UID 65532: a named volume mounted here starts with that owner, so a one-shot
# `fluidity certs init --out /etc/fluidity/certs` can write into it (the compose file does).
COPY --chown=65532:65532 deploy/container/certs/ /etc/fluidity/certs/
USER 65532:65532
# The tunnel port; health_addr (default 127.0.0.1:8081) is published only when bound to 0.0.0.0 in server.yaml.
EXPOSE 8443
ENTRYPOINT ["/fluidity"]
CMD ["server", "--config", "/etc/fluidity/server.yaml"]
# `fluidity health` probes /healthz on the health_addr of the same server.yaml; the agent role overrides it
# (health check URL http://127.0.0.1:PROXY_PORT/healthz).
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["/fluidity", "health", "--config", "/etc/fluidity/server.yaml"]
