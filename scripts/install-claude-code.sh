#!/usr/bin/env bash
# Installs Claude Code (the `claude` CLI) from the npm registry, for the claude_code tests and
# for trying Claude Code against forge (see docs/anthropic.md).
#   scripts/install-claude-code.sh            latest version
#   CLAUDE_CODE_VERSION=2.1.197 scripts/install-claude-code.sh
exec "$(dirname "$0")/npm-install-cli.sh" @anthropic-ai/claude-code \
  "${CLAUDE_CODE_VERSION:-latest}" claude
