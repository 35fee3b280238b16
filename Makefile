# forge's one-command entry points. `make test` is what .ci/run runs.
GO ?= go
PKGS ?= ./...

.PHONY: build test fuzz-short bench lint

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o forge ./cmd/forge

# The whole test suite, plus a short fuzz of every parser that reads input
# from strangers. Tests needing PostgreSQL, Docker or Chromium skip locally
# when those are missing and fail when CI=true.
test:
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 25m $(PKGS)
	$(MAKE) fuzz-short

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
