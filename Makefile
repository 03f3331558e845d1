# Developer entry points. `make test` is what CI runs (.ci/run).
#
# Every target that needs a server first runs scripts/install-nats-server.sh,
# which is idempotent and writes the resolved binary to .tools/nats-server-path.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c

NATS_URL ?= nats://127.0.0.1:4222
# Where `make run` looks for the server's monitoring endpoint (see nats.conf).
NATS_HTTP ?= http://127.0.0.1:8222
# How long `make run` waits for a server it started to report healthy.
NATS_READY_SECONDS ?= 15

INSTALL_NATS := scripts/install-nats-server.sh
NATS_SERVER_PATH_FILE := .tools/nats-server-path

# Secured by default (docs/SECURITY.md): one nkey per role in AUTH_DIR, and the server
# config make writes, NATS_AUTH_CONF: nats.conf's settings plus the authorization block.
AUTH_DIR := data/auth
NATS_AUTH_CONF := data/nats-auth.conf
SHOP_FAST := ./target/fast/shop

.PHONY: all test fmt-check clippy cargo-test nats-server nats auth run bench bench-scale bench-cluster chaos chaos-long clean-data fuzz flood

all: test

# Resolves (and if needed installs) nats-server; the path lands in $(NATS_SERVER_PATH_FILE).
nats-server:
	@bash $(INSTALL_NATS) >/dev/null

# Tests build without the `jemalloc` feature (TEST_FEATURES): the allocator changes no
# behaviour, and its C build is a minute of the budget on 2 cores. `make bench` measures
# the jemalloc builds the binaries ship with.
TEST_FEATURES := --no-default-features

test: nats-server
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets $(TEST_FEATURES) -- -D warnings
	# The deployable binary links no test machinery.
	if cargo tree -p shop -e normal --prefix none | grep -E '^shop-(harness|bench|chaos|lab) '; then \
		echo "make test: the shop binary links test machinery (above)" >&2; exit 1; fi
	# Process-mode tests (chaos, shutdown) run the real service binaries: build them first,
	# so they are never stale.
	cargo build --workspace --bins $(TEST_FEATURES)
	NATS_SERVER_BIN="$$(cat $(NATS_SERVER_PATH_FILE))" cargo test --workspace $(TEST_FEATURES)

# The `shop` binary `make run` uses (optimised, no LTO, no jemalloc: quick to build).
$(SHOP_FAST): FORCE
	cargo build --profile fast --no-default-features --bin shop

.PHONY: FORCE
FORCE:

# Each role's key (kept once written) and the authorization block (rewritten every time,
# so it follows the rights of the binary just built), then the server config that
# includes nats.conf and that block. Rotate with `shop auth init --dir data/auth --rotate`.
auth: $(SHOP_FAST)
	@$(SHOP_FAST) auth init --dir $(AUTH_DIR) >/dev/null
	@echo "make: NATS identities in $(AUTH_DIR) (one .nk per role, auth.conf)"
	@mkdir -p data/nats
	@printf '%s\n' \
		'# Written by make (see the Makefile): nats.conf plus the shop'"'"'s authorization.' \
		'include "../nats.conf"' \
		'include "auth/auth.conf"' >$(NATS_AUTH_CONF)

# The server alone, in the foreground, secured; Ctrl-C stops it.
nats: nats-server auth
	exec "$$(cat $(NATS_SERVER_PATH_FILE))" --config $(NATS_AUTH_CONF)

# Starts nats-server in the background unless something already answers on NATS_URL,
# waits for /healthz with a deadline, then runs the shop in the foreground.
run: nats-server auth
	@hostport="$(NATS_URL)"; hostport="$${hostport#*://}"; hostport="$${hostport%%/*}"; \
	host="$${hostport%:*}"; port="$${hostport##*:}"; \
	if (exec 3<>"/dev/tcp/$$host/$$port") 2>/dev/null; then \
		echo "make run: using the NATS server already on $(NATS_URL)"; \
		if [ -f data/nats-server.pid ] && kill -0 "$$(cat data/nats-server.pid)" 2>/dev/null; then \
			"$$(cat $(NATS_SERVER_PATH_FILE))" --signal reload="$$(cat data/nats-server.pid)" \
				&& echo "make run: asked it to reload $(AUTH_DIR)/auth.conf"; \
		fi; \
	else \
		mkdir -p data/nats; \
		echo "make run: starting nats-server in the background (log: data/nats-server.log, pid: data/nats-server.pid)"; \
		nohup "$$(cat $(NATS_SERVER_PATH_FILE))" --config $(NATS_AUTH_CONF) >data/nats-server.log 2>&1 & \
		echo $$! >data/nats-server.pid; \
		deadline=$$((SECONDS + $(NATS_READY_SECONDS))); \
		until curl -sf "$(NATS_HTTP)/healthz" >/dev/null; do \
			if ((SECONDS >= deadline)); then \
				echo "make run: nats-server not healthy after $(NATS_READY_SECONDS)s; last log lines:" >&2; \
				tail -n 20 data/nats-server.log >&2; \
				exit 1; \
			fi; \
			sleep 0.2; \
		done; \
	fi
	@echo "make run: each service connects with its own key from $(AUTH_DIR); operators use"
	@echo "  nats --nkey $(AUTH_DIR)/operator.nk --inbox-prefix _INBOX_operator …  and  $(SHOP_FAST) --auth-dir $(AUTH_DIR) …"
	NATS_URL="$(NATS_URL)" $(SHOP_FAST) --auth-dir $(AUTH_DIR) run

# The shop on a local 3-node JetStream cluster (README.md, "Run on a 3-node cluster"):
# the nodes of deploy/nats-cluster/ secured like `make run`, a wait for the meta leader,
# then `shop run --replicas 3` against all three; Ctrl-C stops the shop, then the nodes.
# `make run-cluster-check`, from another terminal, pings the services, steps the ORDERS
# leader down and sees an order through (tests/cluster.rs, #[ignore]d in make test).
.PHONY: run-cluster run-cluster-check
run-cluster: nats-server auth
	NATS_SERVER_BIN="$$(cat $(NATS_SERVER_PATH_FILE))" SHOP_BIN=$(SHOP_FAST) scripts/run-cluster.sh

run-cluster-check:
	cargo test -p shop --no-default-features --test cluster -- --ignored --exact \
		the_shop_make_run_cluster_started_answers_and_takes_an_order_across_a_step_down

# The bench (shop-lab) starts its own nats-server and runs the service binaries as
# processes, so all of them are built in release (the LTO profile) first.
bench: nats-server
	cargo build --release -p shop-lab -p shop-checkout -p shop-inventory -p shop-payment -p shop-gateway-sim --bins
	NATS_SERVER_BIN="$$(cat $(NATS_SERVER_PATH_FILE))" ./target/release/shop-lab bench $(BENCH_ARGS)

# Only the scale curve: orders/s with 1, 2 and 4 payment instances against a 100 ms
# gateway (docs/BENCHMARKS.md, "Scale-out: payment instances against the gateway").
bench-scale: nats-server
	cargo build --release -p shop-lab -p shop-checkout -p shop-inventory -p shop-payment -p shop-gateway-sim --bins
	NATS_SERVER_BIN="$$(cat $(NATS_SERVER_PATH_FILE))" ./target/release/shop-lab bench --scale payment=1,2,4 $(BENCH_ARGS)

# The bench on a fresh local three-node cluster: baseline and system in one run, every
# stream and KV bucket R3 (docs/BENCHMARKS.md, "On a 3-node cluster (R3)").
bench-cluster: nats-server
	cargo build --release -p shop-lab -p shop-checkout -p shop-inventory -p shop-payment -p shop-gateway-sim --bins
	NATS_SERVER_BIN="$$(cat $(NATS_SERVER_PATH_FILE))" ./target/release/shop-lab bench --cluster $(BENCH_ARGS)

# The chaos suite (shop-lab) on debug builds, as docs/RELIABILITY.md runs it.
# `make chaos` is the short run; `make chaos-long` the 5,000-order run. CHAOS_ARGS adds flags.
chaos: nats-server
	cargo build -p shop-lab -p shop-checkout -p shop-inventory -p shop-payment -p shop-gateway-sim --bins
	NATS_SERVER_BIN="$$(cat $(NATS_SERVER_PATH_FILE))" ./target/debug/shop-lab chaos $(CHAOS_ARGS)

chaos-long: nats-server
	cargo build -p shop-lab -p shop-checkout -p shop-inventory -p shop-payment -p shop-gateway-sim --bins
	NATS_SERVER_BIN="$$(cat $(NATS_SERVER_PATH_FILE))" ./target/debug/shop-lab chaos --orders 5000 --broker-restarts 3 $(CHAOS_ARGS)

# The long run on a local three-node cluster (R3): each fault kills or freezes the ORDERS leader.
chaos-cluster: nats-server
	cargo build -p shop-lab -p shop-checkout -p shop-inventory -p shop-payment -p shop-gateway-sim --bins
	NATS_SERVER_BIN="$$(cat $(NATS_SERVER_PATH_FILE))" ./target/debug/shop-lab chaos --cluster --orders 5000 --broker-restarts 6 $(CHAOS_ARGS)

clean-data:
	rm -rf data

# Every fuzz target (fuzz/, cargo-fuzz on stable through RUSTC_BOOTSTRAP=1) for FUZZ_RUNS
# inputs each, one at a time at nice 19, then corpus minimisation; figures in
# fuzz/results.tsv and docs/RELIABILITY.md ("Fuzzing"). FUZZ_TARGETS picks some.
FUZZ_RUNS ?= 10000000
FUZZ_TARGETS ?=
fuzz:
	FUZZ_RUNS=$(FUZZ_RUNS) fuzz/run.sh $(FUZZ_TARGETS)

# The hostile-input flood (tests/flood.rs, #[ignore]d in make test because it takes
# minutes): 20,000 hostile messages mixed with 2,000 real orders, then the accounting.
flood: nats-server
	NATS_SERVER_BIN="$$(cat $(NATS_SERVER_PATH_FILE))" cargo test -p shop --no-default-features --test flood -- --ignored --nocapture
