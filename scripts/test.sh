#!/usr/bin/env bash
# The project's test command (README, CI). Installs what the tests need, then checks
# formatting and lints and runs every test. Works on a fresh machine with only the Rust
# toolchain; Debian packages the tests use are installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need, one per line: "command package". (protoc is only for the
# etcd-client crate, a test dependency; building Strata itself needs no protoc.)
need_packages=(
  "curl curl"
  "etcdctl etcd-client"
  "etcd etcd-server"
  "protoc protobuf-compiler"
  "dig dnsutils"
)
missing=()
for entry in "${need_packages[@]}"; do
  read -r cmd pkg <<<"$entry"
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

# Python packages the compatibility tests drive (client libraries used unchanged).
python_packages=("consul:py-consul" "nacos:nacos-sdk-python==1.0.0")
for entry in "${python_packages[@]}"; do
  module="${entry%%:*}"
  package="${entry#*:}"
  if ! python3 -c "import $module" >/dev/null 2>&1; then
    echo "installing Python package: $package"
    python3 -m pip install -q "$package"
  fi
done

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
echo "== doc tests"
cargo test --workspace --doc
