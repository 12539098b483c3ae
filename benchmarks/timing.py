"""How every figure is timed: first call alone, warm-up, interleaved windows, median and spread.

The clock is read only after the device is synchronised; the variants of one measurement are
interleaved (A B A B ...) so drift hits all alike; beside every window, the share of the CPUs
that other processes took meanwhile (/proc/stat), since on a shared machine torch's OpenMP
threads slow down many times over, XLA's far less.
"""

import dataclasses
import math
import os
import resource
import statistics
import time
from pathlib import Path

from mnist_common.fileio import say

WINDOW_LIMIT_FACTOR = 4  # a timed window stops early once it lasts 4 x --window-seconds
QUIET = 0.1  # --wait-quiet: at most this share of the CPUs used by other processes
METHOD = ("each function is called once alone (first call: compile/jit/autotune), then "
          "warmed up; a repeat is a window of several calls ended by a device "
          "synchronisation; variants are interleaved A B A B ...; median and min-max "
          "over repeats")

_STARTED = time.perf_counter()


def status(message):
    """One progress line on stderr, prefixed with the seconds since start."""
    say(f"{time.perf_counter() - _STARTED:6.1f}s {message}")


@dataclasses.dataclass
class Candidate:
    """One function to time: `call()` does one unit of work, `sync(result)` waits for it."""

    name: str
    call: object
    sync: object


def summarize(samples):
    """Median, min and max of a list of numbers (and the numbers)."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": list(samples)}


def rates(seconds_per_call, work_per_call):
    """`summarize` of work / second from seconds-per-call samples."""
    return summarize([work_per_call / s for s in seconds_per_call["samples"]])


def describe_error(err):
    """One line for the results file: the exception's type and first message line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:500]


def process_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class OtherLoad:
    """Share of all CPUs that other processes used between start() and stop() (Linux)."""

    def __init__(self):
        self.start()

    @staticmethod
    def _machine_busy_seconds():
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        ticks = [int(f) for f in fields]
        idle = ticks[3] + ticks[4]  # idle + iowait
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def start(self):
        self.wall, self.busy = time.perf_counter(), self._machine_busy_seconds()
        self.mine = process_cpu_seconds()
        return self

    def seconds(self):
        """Wall seconds since start()."""
        return time.perf_counter() - self.wall

    def stop(self):
        """Other processes' CPU-seconds / (wall seconds x CPUs), or None off Linux."""
        busy = self._machine_busy_seconds()
        if busy is None or self.busy is None:
            return None
        others = (busy - self.busy) - (process_cpu_seconds() - self.mine)
        capacity = (time.perf_counter() - self.wall) * os.cpu_count()
        # /proc/stat counts in 10 ms ticks: clamp the rounding of short windows into [0, 1].
        return min(1.0, max(0.0, others / capacity)) if capacity > 0 else None


def fmt_share(value):
    return "n/a" if value is None else f"{100 * value:.0f} %"


def wait_for_quiet(limit_seconds):
    """Wait (up to `limit_seconds`) until other processes use < 10 % of the CPUs for 1 s."""
    deadline = time.perf_counter() + limit_seconds
    said = False
    while time.perf_counter() < deadline:
        other_load = OtherLoad()
        time.sleep(1.0)
        load = other_load.stop()
        if load is None or load < QUIET:
            return
        if not said:
            status(f"  waiting for a quiet machine (others use {fmt_share(load)} of the CPUs)")
            said = True
    if said:
        status("  still busy: measuring anyway")


def first_calls(cand, settings):
    """(seconds of the first call, seconds of the last warm-up call) of one candidate."""
    start = time.perf_counter()
    cand.sync(cand.call())
    first = estimate = time.perf_counter() - start
    for _ in range(settings.warmup_steps):
        start = time.perf_counter()
        cand.sync(cand.call())
        estimate = time.perf_counter() - start
    return first, estimate


def timed_window(cand, calls, settings):
    """(seconds per call, calls made, others' CPU share) of one window of up to `calls` calls.

    A window planned from a fast warm-up call could last minutes if the machine gets busy, so
    it ends early past WINDOW_LIMIT_FACTOR x --window-seconds (the calls made still count).
    """
    longest = WINDOW_LIMIT_FACTOR * settings.window_seconds
    other_load = OtherLoad()
    start = time.perf_counter()
    for done in range(1, calls + 1):
        out = cand.call()
        if done >= settings.min_steps and time.perf_counter() - start > longest:
            break
    cand.sync(out)
    return (time.perf_counter() - start) / done, done, other_load.stop()


def windows_load(results):
    """The other-process CPU shares of every timed window in these timing results."""
    return [load for result in results for load in result.get("other_load_per_window", [])
            if load is not None]


def _start(candidates, settings, results):
    """First call and warm-up of each candidate: [(candidate, calls per window)] that work."""
    live = []
    for cand in candidates:
        try:
            first, estimate = first_calls(cand, settings)
        except Exception as err:  # e.g. torch.compile without a working compiler
            results[cand.name] = {"error": describe_error(err)}
            status(f"  {cand.name}: failed: {results[cand.name]['error']}")
            continue
        calls = max(settings.min_steps, math.ceil(settings.window_seconds / max(estimate, 1e-7)))
        results[cand.name] = {"first_call_seconds": first, "calls_per_window": [],
                              "other_load_per_window": [], "samples": []}
        live.append((cand, calls))
    return live


def time_interleaved(candidates, settings):
    """Time each candidate: first call alone, warm-up, then `repeats` interleaved windows.

    Returns {name: {"first_call_seconds", "calls_per_window", "other_load_per_window",
    "seconds_per_call": stats}} or {name: {"error": "..."}} for a candidate that raised.
    """
    wait_for_quiet(settings.wait_quiet)
    results = {}
    live = _start(candidates, settings, results)
    for _ in range(settings.repeats):
        for cand, calls in live:
            result = results[cand.name]
            if "error" in result:
                continue
            try:
                seconds, done, load = timed_window(cand, calls, settings)
            except Exception as err:
                results[cand.name] = {"error": describe_error(err)}
                continue
            result["samples"].append(seconds)
            result["calls_per_window"].append(done)
            result["other_load_per_window"].append(load)
    for result in results.values():
        if "samples" in result:
            result["seconds_per_call"] = summarize(result.pop("samples"))
    return results
