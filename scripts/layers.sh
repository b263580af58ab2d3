#!/usr/bin/env bash
# Checks the layer rules of the source tree (docs/design.md, "Code map"):
#   1. below the crate root, code names crate items by module path (`crate::mem::sysmem::SysVec`),
#      never through the root's re-exports (`crate::SysVec`, `crate::{Error, Result}`);
#   2. a layer imports only from its own folder or from layers below it.
# Comment lines (`//`, `///`, `//!`) are skipped: doc links may name the public paths.
# Exits 1 and lists the offending lines when a rule is broken. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

# Layers, top (0) to bottom. A file's layer is given by its first path component under src/.
# Leaves (error, stats, options) may be imported by every layer; error and stats import
# nothing of the crate, options only io.
find src -name '*.rs' | sort | xargs awk '
BEGIN {
  n = split("lib:0 heap:0 migrate:0 persist:0 replica:0 collections:0 global:0 fuzzing:0 inspect:0 engine:1 disk:2 mem:3 io:4 sys:5 options:8 error:9 stats:9", kv, " ")
  for (i = 1; i <= n; i++) { split(kv[i], p, ":"); layer[p[1]] = p[2] }
  names["0"] = "api"; fail = 0; files = 0
}
FNR == 1 {
  files++
  rel = FILENAME; sub(/^src\//, "", rel)
  top = rel; sub(/\/.*/, "", top); sub(/\.rs$/, "", top)
  direct = (rel !~ /\//)
  if (!(top in layer)) { printf "layers.sh: %s: not in any layer (add it to scripts/layers.sh and the code map)\n", FILENAME > "/dev/stderr"; fail = 1 }
  from = layer[top]
}
top == "lib" { next }
/^[ \t]*\/\// { next }
{
  line = $0
  # In a file directly under src/, `super::` is the crate root.
  if (direct) gsub(/(^|[^:A-Za-z0-9_])super::/, " crate::", line)
  while (match(line, /crate::(\{|[A-Za-z_][A-Za-z0-9_]*)/)) {
    name = substr(line, RSTART + 7, RLENGTH - 7)
    line = substr(line, RSTART + RLENGTH)
    code = $0; sub(/^[ \t]+/, "", code)
    if (!(name in layer) || name == "lib") {
      printf "layers.sh: %s:%d: imports the crate root'"'"'s re-export `crate::%s` (use the module path): %s\n", FILENAME, FNR, name, code > "/dev/stderr"; fail = 1; continue
    }
    if (name == top) continue
    to = layer[name]
    if (from >= 8) {
      if (!(top == "options" && name == "io")) { printf "layers.sh: %s:%d: the leaf `%s` imports `crate::%s`: %s\n", FILENAME, FNR, top, name, code > "/dev/stderr"; fail = 1 }
      continue
    }
    if (to >= 8) continue
    if (to < from) { printf "layers.sh: %s:%d: layer `%s` imports `crate::%s`, a layer above it: %s\n", FILENAME, FNR, top, name, code > "/dev/stderr"; fail = 1 }
  }
}
END {
  if (!fail) printf "layers.sh: ok (%d files; layers api > engine > disk > mem > io > sys, leaves error stats options)\n", files
  exit fail
}
' || exit 1
