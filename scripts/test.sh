#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (which build the
# keel binary), then the script tests with kcat and the Python clients
# against that binary. README and .ci/run both call this file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo test --workspace
KEEL_BIN=target/debug/keel bash tests/scripts/run_all.sh
