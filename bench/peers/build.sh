#!/usr/bin/env bash
# Builds every peer echo server in release mode, each on its own, so that one that does not
# build here (glommio on a newer toolchain or kernel, say) is reported and skipped, not fatal.
# Prints one line per peer and the binaries that built; exits non-zero only if none built.
#
# Usage: bash bench/peers/build.sh [PEER...]   (default: all; names as in peer-<name>)
set -u
cd "$(dirname "$0")"

peers=("$@")
if [ ${#peers[@]} -eq 0 ]; then
    peers=(monoio compio tokio-uring tokio glommio)
fi

built=()
failed=()
log_dir=target/build-logs
mkdir -p "$log_dir"
for peer in "${peers[@]}"; do
    log="$log_dir/peer-$peer.log"
    if cargo build --release --locked -p "peer-$peer" >"$log" 2>&1; then
        built+=("$peer")
        echo "built:  peer-$peer -> bench/peers/target/release/peer-$peer"
    else
        failed+=("$peer")
        echo "FAILED: peer-$peer (skipped; last lines of $log below)" >&2
        tail -n 5 "$log" | sed 's/^/    /' >&2
    fi
done

echo "peers built: ${built[*]:-none}${failed[*]:+; failed: ${failed[*]}}"
[ ${#built[@]} -gt 0 ]
