"""Figures for bench/runtime/hetero.sh from plan.json and the workers' metrics.jsonl files.

  hetero_stats.py layout plan.json                 -> "<micro-batch> <layout text>"
  hetero_stats.py outlast <steps> <fast run> <slow run> -> steps the fast worker runs concurrently
  hetero_stats.py round <tokens per step> <prefix> -> "cpu half iso cpu_c half_c conc mixed util_iso% util_conc% bubble%"
  hetero_stats.py summary plan.json mb layout iso/conc... -> the plan and the median utilizations
"""
import json
import statistics
import sys


def step_times(run):
    # the first step warms caches and allocators up
    return [json.loads(line)["step_time_s"] for line in open(run + "/metrics.jsonl")][1:]


def layout(path):
    p = json.load(open(path))
    parts = []
    for c in p["classes"]:
        stages = "+".join("%s:%d-%d" % (s["device_type"], s["layers"][0], s["layers"][1] - 1) for s in c["stages"])
        parts.append("%dx[%s] m=%d" % (c["replicas"], stages, c["micro_batches"]))
    print(p["micro_batch"], " + ".join(parts))


def end_times(run):
    return [json.loads(line)["elapsed_s"] for line in open(run + "/metrics.jsonl")]


def outlast(steps, fast, slow):
    # steps the faster worker needs to keep running while the slower one runs `steps`
    ratio = statistics.mean(step_times(slow)) / statistics.mean(step_times(fast))
    print(int(steps * ratio * 1.15) + 2)


def conc_rate(tok, fast, slow):
    # the faster worker's steps (after its first) that ended before the slower one finished
    t_end = end_times(slow)[-1]
    lines = [json.loads(line) for line in open(fast + "/metrics.jsonl")][1:]
    within = [l["step_time_s"] for l in lines if l["elapsed_s"] <= t_end] or [l["step_time_s"] for l in lines]
    return tok / statistics.mean(within)


def one_round(tok, prefix):
    t_cpu = tok / statistics.mean(step_times(prefix + "-alone-cpu"))
    t_half = tok / statistics.mean(step_times(prefix + "-alone-half"))
    c_cpu = conc_rate(tok, prefix + "-conc-cpu", prefix + "-conc-half")
    c_half = tok / statistics.mean(step_times(prefix + "-conc-half"))
    t_mix = tok / statistics.mean(step_times(prefix + "-mixed"))
    lines = [json.loads(line) for line in open(prefix + "-mixed/metrics.jsonl")][1:]
    nst = len(lines[0]["stage_busy_s"])
    busy = sum(sum(l["stage_busy_s"]) for l in lines)
    bubble = 1 - busy / (nst * sum(l["step_time_s"] for l in lines))
    iso, conc = t_cpu + t_half, c_cpu + c_half
    t_reb = tok / statistics.mean(step_times(prefix + "-rebal"))
    split = [json.loads(line) for line in open(prefix + "-rebal/metrics.jsonl")][-1].get("micro", [])
    print("%.1f %.1f %.1f %.1f %.1f %.1f %.1f %.2f %.2f %.2f %.1f %.2f %.2f %s" % (
        t_cpu, t_half, iso, c_cpu, c_half, conc, t_mix, 100 * t_mix / iso, 100 * t_mix / conc, 100 * bubble,
        t_reb, 100 * t_reb / iso, 100 * t_reb / conc, "/".join(str(m) for m in split)))


def summary(path, mb, lay, utils):
    p = json.load(open(path))["predicted"]
    print("plan: micro-batch %s, %s; predicted %.0f tokens/s = %.1f%% of the planner's bound, bubble %.1f%%"
          % (mb, lay, p["tokens_per_s"], 100 * p.get("utilization", 0), 100 * p["bubble_fraction"]))
    col = [[float(x) for x in u.split("/")] for u in utils]
    med = [statistics.median(c[i] for c in col) for i in range(4)]
    print("utilization, median of %d rounds: plan's split %.1f%% of the isolated bound, %.1f%% of the concurrent bound;"
          " with --rebalance %.1f%% and %.1f%%" % (len(utils), med[0], med[1], med[2], med[3]))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "layout":
        layout(sys.argv[2])
    elif cmd == "outlast":
        outlast(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif cmd == "round":
        one_round(float(sys.argv[2]), sys.argv[3])
    else:
        summary(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
