#!/usr/bin/env bash
# Pack the Python packages the GPU image lacks (cuda_lib/gpu/gpu-wheels.txt) for a device call:
# downloads the cp312 manylinux wheels into .whl/ (the device README's recipe; sdist-only packages are
# built into pure wheels), lays them out as `pip install --target` would on the device, and writes
# .gpusite/site-cp312.tar.xz (xz: about 60% of the wheels' size, which keeps the carried tree under
# 64 MiB). cuda_lib/gpu/run_all.sh unpacks it into /tmp/site. Run from the repository root:
#   cuda_lib/gpu/pack_site.sh          then carry [".gpusite", ...] in the device call
# PYVER (default 3.12, the GPU image's) and WHEELS (default .whl) make an archive for another Python, e.g. a
# local rehearsal with this machine's: PYVER=3.11 WHEELS=/tmp/whl311 cuda_lib/gpu/pack_site.sh
set -euo pipefail
LIST=cuda_lib/gpu/gpu-wheels.txt
PLAT=(--platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)
PY=${PYTHON:-python3}
PYVER=${PYVER:-3.12}
WHEELS=${WHEELS:-.whl}
ARCHIVE=.gpusite/site-cp${PYVER/./}.tar.xz
mkdir -p "$WHEELS" .gpusite
grep -qx "/.gpusite/" .git/info/exclude || echo "/.gpusite/" >> .git/info/exclude
grep -qx "/.whl/" .git/info/exclude || echo "/.whl/" >> .git/info/exclude
wheels=()
for req in $(grep -v '^#' "$LIST"); do
  name=${req%%==*}; version=${req##*==}
  pattern="$WHEELS/$(echo "$name" | tr '-' '_')-${version}-*.whl"
  if ! compgen -G "$pattern" >/dev/null; then
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp "${PLAT[@]}" \
        -d "$WHEELS" "$req" 2>/dev/null \
      || "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" "$req"   # sdist only (pure Python)
  fi
  compgen -G "$pattern" >/dev/null || { echo "no wheel for $req (looked for $pattern)"; exit 1; }
  wheels+=($(compgen -G "$pattern"))
done
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" --python-version "$PYVER" --implementation cp \
    "${PLAT[@]}" --only-binary=:all: "${wheels[@]}"
rm -rf "$site/bin"   # console scripts with this machine's interpreter; the device runs `python3 -m snakemake`
tar -C "$site" -cf - . | xz -T2 -9 > "$ARCHIVE"
echo "${#wheels[@]} wheels ($(du -cb "${wheels[@]}" | tail -1 | cut -f1) bytes) -> $ARCHIVE ($(stat -c %s "$ARCHIVE") bytes)"
