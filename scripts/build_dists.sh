#!/usr/bin/env bash
# Build the distributions users install: melange and the four first-party plugins, each as an
# sdist and a wheel (the wheel is built from the sdist, so a file missing from the sdist fails
# here), all into one folder for `pip install --find-links`.
#
#   scripts/build_dists.sh [--wheel] [OUT_DIR]     OUT_DIR defaults to dist/
#
# --wheel builds wheels only (faster; what tests/test_wheels.py uses). Earlier melange builds in
# OUT_DIR are removed first: --find-links picks the highest version it sees, stale or not.
# uv comes from UV, else PATH, else .tools/bin/uv (`make install` bootstraps it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

kind=()
if [[ "${1:-}" == "--wheel" ]]; then
    kind=(--wheel)
    shift
fi
out="${1:-dist}"

uv="${UV:-$(command -v uv || true)}"
uv="${uv:-.tools/bin/uv}"
if [[ ! -x "$uv" ]]; then
    echo "build_dists.sh: uv not found; run \`make install\` first (it bootstraps .tools/bin/uv)" >&2
    exit 1
fi
export UV_PYTHON_DOWNLOADS=never

# Workspace package names; the example plugin (melange-example-sqlite) is not released.
packages=(melange melange-aws melange-localsqs melange-gcp melange-azure melange-rabbitmq)

mkdir -p "$out"
shopt -s nullglob
stale=("$out"/melange-*.whl "$out"/melange-*.tar.gz)
for package in "${packages[@]:1}"; do
    stale+=("$out/${package//-/_}"-*.whl "$out/${package//-/_}"-*.tar.gz)
done
if ((${#stale[@]})); then
    rm -f -- "${stale[@]}"
fi

for package in "${packages[@]}"; do
    "$uv" build --quiet --package "$package" --out-dir "$out" ${kind[@]+"${kind[@]}"}  # empty-safe on bash 3
done

echo "built into $out/:"
ls -1 "$out"
