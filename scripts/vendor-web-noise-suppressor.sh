#!/bin/sh
# Refresh appliance/web/vendor/web-noise-suppressor: RNNoise compiled to WebAssembly and the
# AudioWorklet processor that runs it (noise.js), copied as published, nothing rebuilt. The
# processor module is self-contained (the worklet scope imports nothing), and index.js, the
# package's main-thread half, imports nothing either, so both load as they are under the page's
# Content-Security-Policy (script-src 'self' 'wasm-unsafe-eval').
# The .wasm files are @shiguredo/rnnoise-wasm's build (Apache-2.0) of RNNoise (BSD-3-Clause):
# their licence comes from that package, and the script checks the files are the same.
# Run from anywhere; needs npm. Pin the versions here and record them in
# appliance/web/vendor/README.md.
set -eu
SUPPRESSOR_VERSION=0.4.1
RNNOISE_WASM_VERSION=2022.2.0

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/appliance/web/vendor/web-noise-suppressor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "@sapphi-red/web-noise-suppressor@$SUPPRESSOR_VERSION" "@shiguredo/rnnoise-wasm@$RNNOISE_WASM_VERSION" >/dev/null
mkdir suppressor rnnoise
tar xzf sapphi-red-web-noise-suppressor-*.tgz -C suppressor
tar xzf shiguredo-rnnoise-wasm-*.tgz -C rnnoise
for wasm in rnnoise.wasm rnnoise_simd.wasm; do
  cmp suppressor/package/dist/$wasm rnnoise/package/dist/$wasm
done

# RNNoise's own licence (BSD-3-Clause) ships with neither package: kept across refreshes.
keep=$(mktemp); cp "$out/LICENSE.rnnoise" "$keep"
rm -rf "$out"
mkdir -p "$out/rnnoise"
mv "$keep" "$out/LICENSE.rnnoise"
cp suppressor/package/LICENSE suppressor/package/dist/index.js "$out/"
cp suppressor/package/dist/rnnoise.wasm suppressor/package/dist/rnnoise_simd.wasm "$out/"
cp suppressor/package/dist/rnnoise/workletProcessor.js "$out/rnnoise/"
cp rnnoise/package/LICENSE "$out/LICENSE.rnnoise-wasm"
echo "@sapphi-red/web-noise-suppressor $SUPPRESSOR_VERSION (rnnoise-wasm $RNNOISE_WASM_VERSION) -> $out"
ls -l "$out" "$out/rnnoise"
