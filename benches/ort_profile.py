#!/usr/bin/env python3
"""ONNX Runtime's per-operation profile of a fused graph, to set beside
tract's (`causeseg bench --profile`): where each engine spends its time.

    causeseg models export --model models/camvid-cause --out /tmp/fused.onnx
    python3 benches/ort_profile.py /tmp/fused.onnx [--size 448x336] [--runs 5] [--threads 1]

Uses the `onnxruntime` package that tests/run.sh installs into
target/onnxruntime-1.32.0 (or any `onnxruntime` python3 can import), the CPU
execution provider with its default threads (or --threads; beside
`taskset -c 0 causeseg bench --profile` for a one-core profile of each),
2 warm-up runs, then
`enable_profiling` over --runs runs. Prints the mean run time and, per
operation type, nodes per run, milliseconds per run and share of the kernel
time.
"""
import argparse
import collections
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = sorted(glob.glob(os.path.join(ROOT, "target", "onnxruntime-*")))[-1:]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("graph", help="fused ONNX graph (causeseg models export)")
    parser.add_argument("--size", default="448x336", help="input WIDTHxHEIGHT")
    parser.add_argument("--runs", type=int, default=5, help="profiled runs")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's default)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = args.threads
    options.profile_file_prefix = os.path.join(os.environ.get("TMPDIR", "/tmp"), "causeseg-ort-profile")
    session = ort.InferenceSession(args.graph, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    image = np.random.RandomState(0).rand(1, 3, height, width).astype(np.float32)
    warmup = 2
    for _ in range(warmup + args.runs):
        session.run(None, {name: image})
    path = session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)

    runs = [e["dur"] for e in events if e.get("name") == "model_run"][warmup:]
    per_op = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]][0] += 1
            per_op[e["args"]["op_name"]][1] += e["dur"]
    total_runs = warmup + args.runs
    kernel_time = sum(v[1] for v in per_op.values())
    print(f"onnxruntime {ort.__version__} CPU, {args.size}: {sum(runs) / len(runs) / 1000:.1f} ms per run (mean of {len(runs)})")
    print(f"{'operation':<24} {'nodes':>6} {'ms/run':>9} {'share':>7}")
    for op, (count, micros) in sorted(per_op.items(), key=lambda kv: -kv[1][1]):
        print(f"{op:<24} {count // total_runs:>6} {micros / total_runs / 1000:>9.1f} {100 * micros / kernel_time:>6.1f}%")


if __name__ == "__main__":
    main()
