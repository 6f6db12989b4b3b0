#!/usr/bin/env bash
# Installs Claude Code (the `claude` CLI) from the npm registry, for the claude_code tests and
# for trying Claude Code against forge (see docs/anthropic.md).
#   scripts/install-claude-code.sh            latest version
#   CLAUDE_CODE_VERSION=2.1.197 scripts/install-claude-code.sh
set -euo pipefail
if ! command -v npm >/dev/null; then
  echo "install-claude-code: npm is needed (Node.js 18 or newer)" >&2
  exit 1
fi
package="@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION:-latest}"
# The package's postinstall copies the platform's native binary into place; npm 11 asks for
# explicit permission to run install scripts, older npm versions do not know the flag.
if npm install --help 2>/dev/null | grep -q -- "--allow-scripts"; then
  npm install -g --allow-scripts=@anthropic-ai/claude-code "$package"
else
  npm install -g "$package"
fi
claude --version
