#!/usr/bin/env bash
# Installs opencode (the `opencode` CLI) from the npm registry, for the opencode test in
# tests/prefix/test_prefix_agents.py and bench/agent_cache.py.
#   scripts/install-opencode.sh               latest version
#   OPENCODE_VERSION=1.18.33 scripts/install-opencode.sh
exec "$(dirname "$0")/npm-install-cli.sh" opencode-ai "${OPENCODE_VERSION:-latest}" opencode
