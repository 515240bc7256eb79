#!/usr/bin/env bash
# Checks the SAM template offline: `sam validate --lint` always; with SAM_BUILD=1 also
# `sam build`, which cross-compiles the three functions for arm64 with cargo-lambda + zig.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_bin="${VENV_BIN:-$root/.venv/bin}"
template="$root/infra/template.yaml"

# The venv provides sam, cfn-lint, cargo-lambda and (via `python3 -m ziglang`) zig.
export PATH="$venv_bin:$PATH"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export SAM_CLI_TELEMETRY=0

cd "$root"
echo "== sam validate --lint"
sam validate --lint --template-file "$template" --config-file "$root/infra/samconfig.toml"

if [[ "${SAM_BUILD:-0}" == "1" ]]; then
    echo "== sam build (arm64, cargo-lambda)"
    build_dir="${SAM_BUILD_DIR:-$root/target/sam-build}"
    start=$SECONDS
    sam build --template-file "$template" --config-file "$root/infra/samconfig.toml" \
        --beta-features --build-dir "$build_dir"
    for function in SubmitFunction PollFunction CollectFunction; do
        binary="$build_dir/$function/bootstrap"
        file "$binary" | grep -q "ARM aarch64" \
            || { echo "$binary is not an aarch64 executable" >&2; exit 1; }
    done
    echo "sam build took $((SECONDS - start)) s"
fi
