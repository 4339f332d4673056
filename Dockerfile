# syntax=docker/dockerfile:1
# Build: docker build -t kapfhir .
# Run:   docker run -p 8080:8080 -v kapfhir-data:/data kapfhir
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download && go mod verify
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/kapfhir ./cmd/kapfhir

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin kapfhir \
    && mkdir -p /data && chown kapfhir /data
COPY --from=build /out/kapfhir /usr/local/bin/kapfhir
USER 10001
WORKDIR /data
VOLUME ["/data"]
ENV KAPFHIR_DATA_DIR=/data KAPFHIR_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kapfhir"]
CMD ["serve"]
