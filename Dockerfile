# chanrelay in a container: docs/deployment.md ("In a container").
#
#   docker build -t chanrelay .
#   docker run --security-opt seccomp=deploy/docker/seccomp.json \
#     -p 49170:49170 -p 127.0.0.1:49171:49171 chanrelay
#
# The relay runs on io_uring, which Docker's and Podman's default seccomp profiles refuse:
# run it with deploy/docker/seccomp.json (the default's kind of allow-list, plus the three
# io_uring calls), or it stops at start saying "io_uring is unavailable".

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin chanrelay

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin chanrelay
COPY --from=build /src/target/release/chanrelay /usr/local/bin/chanrelay
USER chanrelay
EXPOSE 49170 49171
# Arguments given to `docker run` replace CMD: e.g. `--config /etc/chanrelay/chanrelay.toml`
# (mounted) takes the listen addresses from that file.
ENTRYPOINT ["chanrelay", "serve"]
CMD ["--listen", "0.0.0.0:49170", "--control", "0.0.0.0:49171"]
