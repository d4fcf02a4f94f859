#!/usr/bin/env python3
"""Reads a ctest log (run with --output-on-failure) and exits 0 only when at least one test
failed and every failed test's own output shows LeakSanitizer's stop-the-world tracer crashing
("Tracer caught signal ... LeakSanitizer has encountered a fatal error"). That crash is a race
inside the sanitizer runtime at process exit while other threads wind down (a known defect of
the runtime, not a leak and not a failure of the test); scripts/test.sh reruns such tests once.
Any other failure, or none, exits 1.
    scripts/lsan_tracer_only.py CTEST_LOG
"""
import re
import sys

STATUS = re.compile(r"^\s*\d+/\d+ Test\s+#\d+: (\S+) \.*\s*(\*\*\*\S+|Passed|Not Run|\S+)")
START = re.compile(r"^\s*Start\s+\d+: ")
SIGNATURE = "LeakSanitizer has encountered a fatal error"


def failed_outputs(lines):
    """Maps each failed test to the output ctest printed after its status line."""
    out, current = {}, None
    for line in lines:
        m = STATUS.match(line)
        if m:
            current = m.group(1) if "Passed" not in m.group(2) and "Skipped" not in line else None
            if current:
                out[current] = []
            continue
        if START.match(line) or line.startswith("The following tests"):
            current = None
        elif current:
            out[current].append(line)
    return out


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], errors="replace") as f:
        failed = failed_outputs(f.read().splitlines())
    if not failed:
        return 1
    for name, text in failed.items():
        if SIGNATURE not in "\n".join(text):
            print(f"lsan_tracer_only: {name} failed for another reason", file=sys.stderr)
            return 1
    print("lsan_tracer_only: every failure is the sanitizer tracer's crash: " + ", ".join(sorted(failed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
