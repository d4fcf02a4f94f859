#!/usr/bin/env bash
# Planner time of two builds side by side (docs/plan.md, section 6): bench_plan of build A and of
# build B run alternately, `rounds` times each, so that both see the same machine load; per
# (cluster, model, threads) row the median over the rounds of each run's median wall and CPU
# seconds, and the ratio B / A. The plans must not differ: the tokens/s columns are compared.
#   bench/plan/ab_plan.sh A/bench_plan B/bench_plan [rounds=3] [repeats per run=3]
set -euo pipefail
a=$1 b=$2 rounds=${3:-3} reps=${4:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -1 /proc/loadavg | sed 's/^/# load average before: /'
for r in $(seq "$rounds"); do
  "$a" -n "$reps" > "$work/a.$r" || true
  "$b" -n "$reps" > "$work/b.$r" || true
done
head -1 /proc/loadavg | sed 's/^/# load average after:  /'
# rows: cluster model devices thr splits median min cpu target ok tokens util
rows() { awk '$3 ~ /^[0-9]+$/ && $4 ~ /^[12]$/ {print FILENAME, $1, $2, $4, $6, $8, $11}' "$@"; }
{ rows "$work"/a.* | sed 's/^[^ ]*/A/'; rows "$work"/b.* | sed 's/^[^ ]*/B/'; } |
  awk 'function med(s,   n, v, i, j, t) { n = split(s, v, " ");
         for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
         return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
       { k = $2 " " $3 " " $4; if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
         w[$1, k] = w[$1, k] " " $5; c[$1, k] = c[$1, k] " " $6;
         if (tok[$1, k] == "") tok[$1, k] = $7; else if (tok[$1, k] != $7) tok[$1, k] = "varies" }
       END { printf "%-20s %-12s %3s %9s %9s %6s %9s %9s %6s %s\n", "cluster", "model", "thr",
               "A wall", "B wall", "B/A", "A cpu", "B cpu", "B/A", "same plan";
             for (i = 1; i <= nk; i++) { k = order[i]; split(k, f, " ");
               wa = med(w["A", k]); wb = med(w["B", k]); ca = med(c["A", k]); cb = med(c["B", k]);
               printf "%-20s %-12s %3s %9.3f %9.3f %6.2f %9.3f %9.3f %6.2f %s\n", f[1], f[2], f[3],
                      wa, wb, wb / wa, ca, cb, cb / ca, tok["A", k] == tok["B", k] ? "yes" : "NO" } }'
