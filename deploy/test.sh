#!/usr/bin/env bash
# Builds and runs everything about shipping Fluidity that this machine can: each executable deploy/checks/*.sh in
# name order (the image, compose, Kubernetes manifests, systemd units, ECS, the Windows and macOS builds, the release
# archives). Each check installs what it needs, prints what it proved, and fails with the reason when it cannot
# run: nothing is skipped silently. Exit status: 0 when every check passed, 1 otherwise (after running them all).
set -uo pipefail
cd "$(dirname "$0")/.."

shopt -s nullglob
checks=(deploy/checks/*.sh)
if [ ${#checks[@]} -eq 0 ]; then
  echo "deploy/test.sh: no checks in deploy/checks/" >&2
  exit 1
fi

passed=0
failed=0
failures=()
for check in "${checks[@]}"; do
  name=$(basename "$check" .sh)
  echo "=== deploy check: $name"
  start=$(date +%s)
  if bash "$check"; then
    status=passed
    passed=$((passed + 1))
  else
    status=FAILED
    failed=$((failed + 1))
    failures+=("$name")
  fi
  echo "=== deploy check: $name $status in $(( $(date +%s) - start )) s"
done

echo
if [ "$failed" -gt 0 ]; then
  echo "deploy checks failed: ${failures[*]}"
fi
echo "deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
