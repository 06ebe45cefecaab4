# switchboard: `make run` starts the gateway with ./gateway.toml, `make test` runs the tests.

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= $(PREFIX)/etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
CONFIG     ?= ./gateway.toml
CARGO      ?= cargo
BIN        := target/release/switchboard

.PHONY: build run test chaos lint bench install clean

build:
	$(CARGO) build --release --locked

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

# Not part of `test`: about 2 minutes after the build, most of it the 60 s idle window
# (BENCH_QUICK=1: 10 s).
# Prints a table and writes bench/results.json; see "Benchmarks" in README.md.
bench:
	$(CARGO) build --release --locked
	$(CARGO) bench --locked --bench gateway

install: build
	install -Dm755 $(BIN) $(DESTDIR)$(BINDIR)/switchboard
	install -Dm644 gateway.toml $(DESTDIR)$(SYSCONFDIR)/switchboard/gateway.toml.example
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' contrib/switchboard.service \
		| install -Dm644 /dev/stdin $(DESTDIR)$(UNITDIR)/switchboard.service

clean:
	$(CARGO) clean
