#!/bin/sh
# Rebuild appliance/web/vendor/yjs/yjs.mjs: Yjs (the whiteboard's CRDT, whiteboard.js) and the
# parts of lib0 it uses, as one self-contained ES module. The client has no build step and its
# Content-Security-Policy allows no inline import map, so the bundle must import nothing itself.
# Run from anywhere; needs node and npm. Pin the versions here and record them in
# appliance/web/vendor/README.md.
set -eu
YJS_VERSION=13.6.33
ESBUILD_VERSION=0.28.2

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/appliance/web/vendor/yjs"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund --save-exact "yjs@$YJS_VERSION" "esbuild@$ESBUILD_VERSION" >/dev/null
lib0_version=$(node -p 'require("lib0/package.json").version')
echo 'export * from "yjs";' > entry.mjs
mkdir -p "$out"
npx esbuild entry.mjs --bundle --format=esm --platform=browser --target=es2020 --minify \
  --legal-comments=inline \
  --banner:js="/* Yjs $YJS_VERSION with lib0 $lib0_version (MIT), bundled by scripts/vendor-yjs.sh */" \
  --outfile="$out/yjs.mjs"
cp node_modules/yjs/LICENSE "$out/LICENSE"
cp node_modules/lib0/LICENSE "$out/LICENSE.lib0"
echo "yjs $YJS_VERSION, lib0 $lib0_version -> $out/yjs.mjs ($(wc -c < "$out/yjs.mjs") bytes)"
