# switchboard: `make run` starts the gateway with ./gateway.toml, `make test` runs the tests.

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= $(PREFIX)/etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
CONFIG     ?= ./gateway.toml
CARGO      ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
BIN        := $(TARGET_DIR)/release/switchboard
# The static build: musl for this machine's architecture (x86_64, aarch64 ...).
STATIC_TARGET ?= $(shell uname -m)-unknown-linux-musl
STATIC_BIN    := $(TARGET_DIR)/$(STATIC_TARGET)/release/switchboard

.PHONY: build static run test chaos lint bench install clean

build:
	$(CARGO) build --release --locked

# One statically linked file (musl libc), to copy to any Linux box of the same
# architecture. Installs nothing: it says what is missing.
static:
	@test -d "$$(rustc --print sysroot)/lib/rustlib/$(STATIC_TARGET)" || { \
		echo "make static: the Rust target $(STATIC_TARGET) is not installed; run: rustup target add $(STATIC_TARGET)" >&2; exit 1; }
	@command -v musl-gcc >/dev/null || { \
		echo "make static: musl-gcc not found (ring's C code needs it); on Debian/Ubuntu run: apt-get install musl-tools" >&2; exit 1; }
	$(CARGO) build --release --locked --target $(STATIC_TARGET)
	@echo "make static: $(STATIC_BIN) ($$(stat -c %s $(STATIC_BIN)) bytes, statically linked)"

run: build
	$(BIN) --config $(CONFIG) run

test:
	$(CARGO) test --locked

# Fault injection against the real binary, about two minutes (see tests/chaos.rs). The
# disk-full scenarios need root (they mount a tmpfs) and are skipped without it.
chaos:
	$(CARGO) test --locked --test chaos -- --ignored --test-threads=1 --nocapture

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

# Not part of `test`: about 3 minutes after the builds, most of it real latency, the soak, the 60 s
# idle window (BENCH_QUICK=1: 10 s). BENCH_ONLY=soak, load, real_latency or footprint runs one part.
# The static build is measured too when `make static` can build it.
# Prints a table and writes bench/results.json; see "Benchmarks" in README.md.
bench:
	$(CARGO) build --release --locked
	@if $(MAKE) --no-print-directory static; then static="$(abspath $(STATIC_BIN))"; \
		else static=""; echo "make bench: static build not measured (see above)"; fi; \
		echo "BENCH_STATIC_BINARY=$$static $(CARGO) bench --locked --bench gateway"; \
		BENCH_STATIC_BINARY="$$static" $(CARGO) bench --locked --bench gateway

install: build
	install -Dm755 $(BIN) $(DESTDIR)$(BINDIR)/switchboard
	install -Dm644 gateway.toml $(DESTDIR)$(SYSCONFDIR)/switchboard/gateway.toml.example
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' contrib/switchboard.service \
		| install -Dm644 /dev/stdin $(DESTDIR)$(UNITDIR)/switchboard.service

clean:
	$(CARGO) clean
