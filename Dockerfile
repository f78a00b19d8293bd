# switchboard in a container: Debian 12 slim, built in one stage, run in another
# with only the runtime libraries, as an unprivileged user.
#
#   docker build -t switchboard .
#   docker run --rm -p 8080:8080 switchboard                      # the sample chat
#   docker run --rm -p 8080:8080 -v "$PWD/my-app:/app:ro" switchboard --listen 0.0.0.0:8080 /app

FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      build-essential cmake pkg-config libevent-dev liblua5.4-dev libssl-dev zlib1g-dev \
      libhiredis-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY core core
COPY lua lua
COPY scripts scripts
COPY packaging packaging
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr \
 && cmake --build build -j"$(nproc)" \
 && DESTDIR=/out cmake --install build --strip

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      libevent-core-2.1-7 liblua5.4-0 libssl3 zlib1g libhiredis0.14 lua-cjson \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
      --uid 10001 switchboard
COPY --from=build /out/usr/ /usr/
USER switchboard
EXPOSE 8080
# healthy while the server answers HTTP on 8080 (any status: an app may have no public/);
# bash's /dev/tcp needs no curl
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET / HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q '^HTTP/1.1 [1-5]'"]
ENTRYPOINT ["/usr/bin/switchboard"]
CMD ["--listen", "0.0.0.0:8080", "/usr/share/switchboard/scripts"]
