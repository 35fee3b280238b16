# forge's one-command entry points. `make test` is what .ci/run runs.
GO ?= go
PKGS ?= ./...

# What a build says about itself (forge version). VERSION is the tag at
# HEAD (or a describe string); DATE is the commit's date, not the build's,
# so that building one commit twice gives the same binary.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
DATE ?= $(shell TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)
GOBUILD := CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags '$(LDFLAGS)'

# The platforms of make release, GOOS/GOARCH.
PLATFORMS ?= linux/amd64 linux/arm64 darwin/arm64
DIST ?= dist

# make image: the image's name.
IMAGE ?= forge:$(VERSION)

.PHONY: build test test-loaded fuzz-short bench release image image-test clean

build:
	$(GOBUILD) -o forge ./cmd/forge

# The whole test suite under the race detector, plus a short fuzz of every
# parser that reads input from strangers. Tests needing PostgreSQL or Docker
# skip locally when those are missing and fail when CI=true.
TESTFLAGS ?= -race -count=1 -timeout 30m
test:
	$(GO) vet $(PKGS)
	$(GO) test $(TESTFLAGS) $(PKGS)
	$(MAKE) fuzz-short

# The suite under the race detector while a busy loop occupies every core
# (LOADERS of them, one a core by default): what a shared CI machine does
# to timing. The loops stop when the tests end, pass or fail or interrupt.
# A package may take twice as long as in make test: cmd/forge's browser
# and end-to-end tests took more than 30 minutes on a shared machine.
LOADERS ?= $(shell nproc 2>/dev/null || echo 2)
LOADEDFLAGS ?= -race -count=1 -timeout 60m
test-loaded:
	@pids=""; trap 'kill $$pids 2>/dev/null; wait $$pids 2>/dev/null' EXIT INT TERM; \
	for i in $$(seq $(LOADERS)); do sh -c 'while :; do :; done' & pids="$$pids $$!"; done; \
	echo "test-loaded: $(LOADERS) busy loops (pids$$pids)"; \
	start=$$(date +%s); \
	$(GO) test $(LOADEDFLAGS) $(PKGS); rc=$$?; \
	echo "test-loaded: exit $$rc after $$(( $$(date +%s) - start ))s"; exit $$rc

FUZZTIME ?= 15s
fuzz-short:
	@set -e; for t in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
	  for f in $$(grep -h '^func Fuzz' $$t/*_test.go | sed 's/func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do \
	    echo "fuzz $$t $$f"; $(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$t; \
	  done; \
	done

# Every benchmark of BENCHMARKS.md, with one command.
bench:
	$(GO) test -run='^$$' -bench=. -benchtime=1x -count=1 $(PKGS)

# Static binaries for every platform of PLATFORMS, named
# forge-VERSION-GOOS-GOARCH, and their SHA-256 sums in SHA256SUMS.
release:
	@rm -rf $(DIST) && mkdir -p $(DIST)
	@set -e; for p in $(PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; out=$(DIST)/forge-$(VERSION)-$$os-$$arch; \
	  echo "build $$out"; GOOS=$$os GOARCH=$$arch $(GOBUILD) -o $$out ./cmd/forge; \
	done
	cd $(DIST) && sha256sum forge-* > SHA256SUMS && cat SHA256SUMS

# A container image FROM scratch (deploy/Dockerfile): forge, and the git
# and busybox of this machine its server runs, built offline by the local
# Docker engine (nothing is pulled), for this machine's architecture.
image:
	GOOS=linux GOARCH=$$($(GO) env GOHOSTARCH) $(GOBUILD) -o $(DIST)/forge-image ./cmd/forge
	deploy/image-stage.sh $(DIST)/image $(DIST)/forge-image
	docker build --pull=false -t $(IMAGE) -f deploy/Dockerfile \
	  --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) --build-arg DATE=$(DATE) $(DIST)/image
	@docker image inspect $(IMAGE) --format '{{.RepoTags}} {{.Size}} bytes'

# Builds the image and runs a build in it (TestImage): a webhook to the
# server in a container is fetched with its git and run by its /bin/sh.
image-test:
	$(GO) test -count=1 -run '^TestImage$$' -v ./cmd/forge

clean:
	rm -rf forge $(DIST)
