#!/usr/bin/env bash
# Checks that no two modules of a workspace crate import each other, nor form a longer cycle: for each crate, every
# `crate::<module>` path outside comments (in `use` lines and inline) is an edge from the top-level module of the
# file it is in to <module>; `tsort` fails on any cycle and mutual pairs are named. Items of a crate's root
# (`crate::Foo`, not a module file) and grouped `use crate::{a::x, b::y}` of modules are not edges it sees (the
# script refuses the latter so that none hides an edge). Exits non-zero on a cycle.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for src in crates/*/src; do
    edges=$(mktemp)
    while IFS= read -r file; do
        module=$(echo "${file#"$src"/}" | sed 's|\.rs$||; s|/mod$||; s|/.*||')
        if grep -vE '^\s*//' "$file" | grep -qE 'use crate::\{[^}]*::'; then
            echo "$file: a grouped import of modules (use crate::{a::x, ...}); split it so that this check sees it" >&2
            status=1
        fi
        { grep -vE '^\s*//' "$file" | grep -oE '\bcrate::[a-z_][a-z0-9_]*' || true; } | sed 's/^crate:://' | sort -u |
            while read -r target; do
                if { [ -f "$src/$target.rs" ] || [ -d "$src/$target" ]; } && [ "$target" != "$module" ]; then
                    echo "$module $target"
                fi
            done
    done < <(find "$src" -name '*.rs') | sort -u >"$edges"
    awk -v crate="$src" '{ e[$1 " " $2] = 1 } END { for (k in e) { split(k, p, " "); if ((p[2] " " p[1]) in e && p[1] < p[2]) print crate ": " p[1] " and " p[2] " import each other" } }' "$edges"
    if ! tsort "$edges" >/dev/null 2>&1; then
        echo "$src: its modules import each other in a cycle" >&2
        status=1
    fi
    echo "$src: $(wc -l <"$edges") module edges"
    rm -f "$edges"
done
exit "$status"
