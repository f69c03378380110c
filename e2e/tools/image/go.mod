// Module image builds the container images of make cluster without a
// Docker daemon or a registry (see main.go). Its own module, so that
// go-containerregistry's dependencies never meet Kubernetes's in e2e/tools.
module svcproxy.dev/e2e/tools/image

go 1.26.0

require github.com/google/go-containerregistry v0.22.1

require (
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
)
