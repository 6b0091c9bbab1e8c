"""Embeddings: `minilm`, one sentence per request, concurrency 32, via POST /v1/embeddings.

Server on CPU 0, wrk on CPU 1. Baseline: the same runtime (modelport's transformers
runtime, sentence-transformers underneath) called in-process with batches of 32 sentences on
CPU 0. Target: modelport sentences/s >= 85 % of that. Rounds alternate; medians reported.

    .venv/bin/python -m benchmarks.embeddings [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import SERVER_CPU, free_port, modelport_server, wrk

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."

_IN_PROCESS = """
import sys, time, numpy as np
from pathlib import Path
from modelport.engine.demo_llm import bundled_text_demos
from modelport.runtimes.base import LoadSpec, runtime_class
from modelport.runtimes.unpack import pack_dir
demo = next(d for d in bundled_text_demos() if d.name == "minilm")
tmp = Path(sys.argv[2])
archive = tmp / "minilm.tar"
with archive.open("wb") as fh:
    for chunk in pack_dir(demo.path):
        fh.write(chunk)
spec = LoadSpec(runtime=demo.runtime, artifact_path=archive, artifact_name="minilm.tar",
                sha256="bench", options={**demo.options, "task": demo.task,
                                         "cache_dir": str(tmp / "unpacked")})
rt = runtime_class(demo.runtime)(spec)
rt.load()
x = {"text": np.array([sys.argv[3].encode()] * 32, dtype=object)}
for _ in range(3): rt.predict(x)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < float(sys.argv[1]):
    rt.predict(x); n += 32
print(n / (time.perf_counter() - t0))
"""


def in_process(seconds: float, tmp: Path) -> float:
    out = subprocess.run(
        ["taskset", "-c", SERVER_CPU, sys.executable, "-c", _IN_PROCESS, str(seconds), str(tmp),
         SENTENCE],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    body = {"model": "minilm", "input": SENTENCE, "encoding_format": "float"}
    bases, runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1/embeddings"
        with modelport_server(Path(tmp) / "data", port):
            wrk(url, body, args.concurrency, 2)  # warm-up
            for _ in range(args.rounds):
                bases.append(in_process(args.seconds / 2, Path(tmp)))
                runs.append(wrk(url, body, args.concurrency, args.seconds))
    print("Embeddings: minilm, 1 sentence/request, /v1/embeddings; server CPU 0, wrk CPU 1")
    for base, run in zip(bases, runs, strict=True):
        print(f"in-process batch 32: {base:7.0f} sentences/s | {run.row('modelport')}"
              f" | ratio {run.rps / base:.2f}")  # fmt: skip
    ratio = statistics.median(r.rps / b for r, b in zip(runs, bases, strict=True))
    print(f"EMBEDDINGS RESULT: modelport = {ratio:.0%} of in-process batch-32 sentences/s "
          f"(median of {args.rounds} rounds; target >= 85%)")  # fmt: skip


if __name__ == "__main__":
    main()
