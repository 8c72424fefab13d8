# fngate container image: a static-ish release build on a distroless runtime.
#   docker build -t fngate .
#   docker run -p 8080:8080 -p 9901:9901 -e FNGATE_ADMIN_TOKEN=change-me \
#     -v "$PWD/config:/etc/fngate:ro" fngate
# Mount a directory holding routes.toml (not the single file), so edits that
# replace the file are seen by the watcher.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY src ./src
# Only the demo signing key, which `fngate token` embeds (dev only); no
# certificate or key from certs/ reaches the runtime image's config.
COPY certs/demo-jwt.key.pem ./certs/
RUN cargo build --release --locked --bin fngate --config profile.release.strip=true

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/fngate /usr/local/bin/fngate
# The config is mounted here; the image ships none (and never the dev certificates).
ENV FNGATE_CONFIG=/etc/fngate/routes.toml
# 65532 is distroless's "nonroot" user.
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/fngate"]
# All interfaces inside the container. The admin API then needs $FNGATE_ADMIN_TOKEN:
# without it fngate refuses to start rather than expose an open admin listener.
CMD ["serve", "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:9901"]
