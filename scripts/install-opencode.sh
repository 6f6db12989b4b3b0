#!/usr/bin/env bash
# Installs opencode (the `opencode` CLI) from the npm registry, for the opencode test in
# tests/prefix/test_prefix_agents.py and bench/agent_cache.py.
#   scripts/install-opencode.sh               latest version
#   OPENCODE_VERSION=1.18.33 scripts/install-opencode.sh
set -euo pipefail
if ! command -v npm >/dev/null; then
  echo "install-opencode: npm is needed (Node.js 18 or newer)" >&2
  exit 1
fi
package="opencode-ai@${OPENCODE_VERSION:-latest}"
# The package's postinstall links the platform's native binary; npm 11 asks for explicit
# permission to run install scripts, older npm versions do not know the flag.
if npm install --help 2>/dev/null | grep -q -- "--allow-scripts"; then
  npm install -g --allow-scripts=opencode-ai "$package"
else
  npm install -g "$package"
fi
opencode --version
