"""The GPU idle summary of a profiler trace, on a hand-made trace whose gaps are known."""
from benchmarks import timeline


def _trace():
    x = lambda name, cat, ts, dur: {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur}  # noqa: E731
    return {"traceEvents": [
        x("ProfilerStep#5", "user_annotation", 0, 1000),
        x("aten::item", "cpu_op", 290, 500), x("cudaStreamSynchronize", "cuda_runtime", 300, 400),
        x("k1", "kernel", 10, 100),     # busy 10-110
        x("k2", "kernel", 50, 100),     # overlaps k1: busy 10-150
        x("k3", "kernel", 153, 10),     # gap 3 us
        x("copy", "gpu_memcpy", 180, 20),  # gap 17 us
        x("k4", "kernel", 700, 100),    # gap 500 us, opened at 200 while aten::item / sync ran? no: 200 < 290
        x("k5", "kernel", 810, 40),     # gap 10 us
        {"ph": "i", "name": "marker", "ts": 5},
    ]}


def test_idle_summary_matches_the_gaps_by_hand():
    s = timeline.idle_summary(_trace(), top=2)
    assert s["steps"] == 1
    assert abs(s["window_ms"] - (850 - 10) / 1e3) < 1e-9
    assert abs(s["busy_ms"] - (140 + 10 + 20 + 100 + 40) / 1e3) < 1e-9
    assert abs(s["idle_ms"] - (3 + 17 + 500 + 10) / 1e3) < 1e-9
    counts = {upper: count for upper, count, _ in s["bins"]}
    assert counts == {5: 1, 20: 2, 100: 0, 1000: 1, float("inf"): 0}
    assert [g for g, *_ in s["gaps"]] == [500, 17]
    gap, before, after, host = s["gaps"][0]
    assert (before, after, host) == ("copy", "k4", "-")  # nothing on the host ran at 200 us


def test_the_host_operation_is_the_innermost_one_running():
    trace = _trace()
    trace["traceEvents"].append({"ph": "X", "name": "k0", "cat": "kernel", "ts": 301, "dur": 5})
    s = timeline.idle_summary(trace, top=1)
    assert s["gaps"][0][3] == "cudaStreamSynchronize"  # the gap 306-700 opens inside the sync, inside aten::item
    assert "idle" in timeline.format_summary(s)


def test_a_trace_without_steps_is_summarised_as_one_region():
    trace = _trace()
    trace["traceEvents"] = [e for e in trace["traceEvents"] if not e["name"].startswith("ProfilerStep")]
    s = timeline.idle_summary(trace)
    assert s["steps"] == 0 and abs(s["idle_ms"] - (3 + 17 + 500 + 10) / 1e3) < 1e-9  # every device event counts
    text = timeline.format_summary(s)
    assert "over the profiled region" in text and "per step" not in text
