#!/usr/bin/env bash
# Installs an agent CLI globally from the npm registry and prints its version; used by
# scripts/install-claude-code.sh and scripts/install-opencode.sh.
#   scripts/npm-install-cli.sh PACKAGE VERSION COMMAND
set -euo pipefail
package=$1 version=$2 command=$3
if ! command -v npm >/dev/null; then
  echo "$(basename "$0"): npm is needed to install $package (Node.js 18 or newer)" >&2
  exit 1
fi
# The package's postinstall puts the platform's native binary into place; npm 11 asks for
# explicit permission to run install scripts, older npm versions do not know the flag.
if npm install --help 2>/dev/null | grep -q -- "--allow-scripts"; then
  npm install -g --allow-scripts="$package" "$package@$version"
else
  npm install -g "$package@$version"
fi
"$command" --version
