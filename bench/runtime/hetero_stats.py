"""Figures for bench/runtime/hetero.sh from plan.json and the workers' metrics.jsonl files.

  hetero_stats.py layout plan.json                 -> "<micro-batch> <layout text>"
  hetero_stats.py round <tokens per step> <prefix> -> "cpu half bound mixed util% bubble%"
  hetero_stats.py summary plan.json mb layout u... -> the plan and the median utilization
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


def one_round(tok, prefix):
    t_cpu = tok / statistics.mean(step_times(prefix + "-alone-cpu_threads_1"))
    t_half = tok / statistics.mean(step_times(prefix + "-alone-cpu_threads_1_slow_2"))
    t_mix = tok / statistics.mean(step_times(prefix + "-mixed"))
    lines = [json.loads(line) for line in open(prefix + "-mixed/metrics.jsonl")][1:]
    nst = len(lines[0]["stage_busy_s"])
    busy = sum(sum(l["stage_busy_s"]) for l in lines)
    bubble = 1 - busy / (nst * sum(l["step_time_s"] for l in lines))
    bound = t_cpu + t_half
    print("%.1f %.1f %.1f %.1f %.2f %.2f" % (t_cpu, t_half, bound, t_mix, 100 * t_mix / bound, 100 * bubble))


def summary(path, mb, lay, utils):
    p = json.load(open(path))["predicted"]
    print("plan: micro-batch %s, %s; predicted %.0f tokens/s = %.1f%% of the planner's bound, bubble %.1f%%"
          % (mb, lay, p["tokens_per_s"], 100 * p.get("utilization", 0), 100 * p["bubble_fraction"]))
    print("utilization (mixed / sum of standalone), median of %d rounds: %.1f%%" % (len(utils), statistics.median(utils)))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "layout":
        layout(sys.argv[2])
    elif cmd == "round":
        one_round(float(sys.argv[2]), sys.argv[3])
    else:
        summary(sys.argv[2], sys.argv[3], sys.argv[4], [float(u) for u in sys.argv[5:]])
