# Sourced by ./run-bench, ./run-tests and .ci/run: makes `cargo` available on
# a fresh machine (rustup's stable toolchain, installed for this user when
# missing) so the README's commands work before anything else is set up.
# shellcheck shell=bash
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    printf '==> installing the Rust toolchain (rustup, stable)\n' >&2
    if ! command -v curl >/dev/null 2>&1; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "curl is missing and installing it needs root: run 'sudo apt-get install curl ca-certificates'" >&2
            exit 1
        fi
        apt-get update -qq && apt-get install -y -qq curl ca-certificates >/dev/null
    fi
    if ! command -v cc >/dev/null 2>&1; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "a C linker (cc) is missing and installing it needs root: run 'sudo apt-get install build-essential'" >&2
            exit 1
        fi
        apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
    fi
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy >&2
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
