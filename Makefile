# One way to run everything. `make demo` and `make test` are the README's quick start.
# Empty: the first Python >= 3.11 on PATH once `scripts/setup-debian.sh` has run (Ubuntu
# 22.04's python3 is 3.10, so there it is python3.11).
PYTHON ?=
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# Layers 2 and 3 need root (FUSE mounts, network namespaces, nftables, tc): a normal user
# runs them as root of a private user + network namespace (nothing reaches the host).
AS_ROOT := scripts/test-as-namespace-root.sh

.PHONY: setup setup-test demo test unit process network e2e lint typecheck nix-check nix-sandbox vm-test service-check bench clean

$(BIN)/musicfs: pyproject.toml scripts/setup-debian.sh
	scripts/setup-debian.sh run
	test -x $(BIN)/python || $${PYTHON:-$$(scripts/find-python.sh)} -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

setup: $(BIN)/musicfs

setup-test: setup
	scripts/setup-debian.sh test

demo: setup
	$(BIN)/musicfs demo

# Everything CI holds a change to: style, types, all three test layers, packaging checks.
test: setup-test lint typecheck nix-check service-check nix-sandbox
	MUSICFS_REQUIRE_ALL_LAYERS=1 $(AS_ROOT) $(BIN)/pytest $(PYTEST_ARGS)

unit: setup
	$(BIN)/pytest -m "not process and not network" $(PYTEST_ARGS)

process: setup-test
	$(AS_ROOT) $(BIN)/pytest -m process $(PYTEST_ARGS)

network: setup-test
	$(AS_ROOT) $(BIN)/pytest -m network $(PYTEST_ARGS)

# Real players and scanners (ffmpeg, mpv, mpd, beets) on real mounts; part of `make test`.
e2e: setup-test
	$(AS_ROOT) $(BIN)/pytest -m e2e $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check musicfs tests $(wildcard bench)
	$(BIN)/ruff format --check musicfs tests $(wildcard bench)

typecheck: setup
	$(BIN)/mypy musicfs

# Every .nix file parses; with NIXPKGS_LIB=<nixpkgs lib/ folder> the NixOS module is also
# evaluated against nixpkgs' lib and its unit and settings checked (README, Nix / NixOS).
NIXPKGS_LIB ?=
nix-check:
	scripts/check-nix.sh
	@if [ -n "$(NIXPKGS_LIB)" ]; then scripts/eval-nixos-module.sh "$(NIXPKGS_LIB)"; \
	else echo "nix-check: module evaluation skipped (set NIXPKGS_LIB=<nixpkgs lib/ folder>)"; fi

service-check:
	scripts/check-service.sh

# nix/package.nix's build and checkPhase imitated in a bubblewrap sandbox (uid 1000, no
# network, no /sys, only /bin/sh), in pytest's default and importlib import modes.
NIX_SANDBOX_MODES ?= prepend importlib
nix-sandbox: setup-test
	scripts/nix-sandbox-check.sh $(NIX_SANDBOX_MODES)

# The VM scenarios (tests/vm/scenarios, also embedded by nixos/tests) on Debian machines with
# systemd as PID 1 and dist/musicfs.service; the rootfs is cached (scripts/vm-rootfs.sh).
vm-test: setup-test
	MUSICFS_VM_TEST=1 $(BIN)/pytest tests/vm $(PYTEST_ARGS)

bench: setup
	scripts/setup-debian.sh bench
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
