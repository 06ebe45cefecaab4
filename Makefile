# switchboard: `make run` starts the gateway with ./gateway.toml, `make test` runs the tests.

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= $(PREFIX)/etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
CONFIG     ?= ./gateway.toml
CARGO      ?= cargo
BIN        := target/release/switchboard

.PHONY: build run test lint bench install clean

build:
	$(CARGO) build --release --locked

run: build
	$(BIN) --config $(CONFIG) run

test:
	$(CARGO) test --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

bench:
	@echo "make bench: not written yet (the benchmarks issue adds it); nothing was measured."

install: build
	install -Dm755 $(BIN) $(DESTDIR)$(BINDIR)/switchboard
	install -Dm644 gateway.toml $(DESTDIR)$(SYSCONFDIR)/switchboard/gateway.toml.example
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' contrib/switchboard.service \
		| install -Dm644 /dev/stdin $(DESTDIR)$(UNITDIR)/switchboard.service

clean:
	$(CARGO) clean
