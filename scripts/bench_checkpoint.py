"""`scripts/bench checkpoint`: checkpoint speed. Saving and loading the base preset
(~100M parameters) with its AdamW state, to a local folder (file://) and to a loopback
S3-compatible server (moto, as the tests use), next to a plain write of the same bytes
to the same disk (the local limit); and the training stall of a background checkpoint
(the copy to host memory) as a share of one step, for the small and base presets.
Writes benchmarks/checkpoint.md. Usage: bench_checkpoint.py MODEL_BENCH."""
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

from bench_models import SHAPES as FLAGS

# Each preset's flags and the batch its step stall is measured against.
SHAPES = {"small": (FLAGS["small"], "8"), "base": (FLAGS["base"], "1")}


def measure(binary, shape, batch, to, plain=None, env=None):
    command = [binary] + shape + ["--batch", batch, "--repeats", "3", "checkpoint", "--to", to]
    if plain:
        command += ["--plain", plain]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return next(json.loads(l) for l in out.splitlines() if l.startswith("{"))


def start_moto(folder):
    """A moto server on a loopback port, a bucket `bench` in it, and its AWS_* settings."""
    log = open(os.path.join(folder, "moto.log"), "w")
    server = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", "0"], stdout=log, stderr=log)
    for _ in range(200):
        found = re.search(r"Running on http://127.0.0.1:(\d+)", open(log.name).read())
        if found:
            break
        time.sleep(0.1)
    else:
        server.kill()
        sys.exit("moto_server did not start (scripts/setup installs it)")
    port = int(found.group(1))
    connection = http.client.HTTPConnection("127.0.0.1", port)
    connection.request("PUT", "/bench")
    connection.getresponse().read()
    env = dict(os.environ, AWS_ENDPOINT=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="test",
               AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true")
    return server, env


def main():
    binary = sys.argv[1]
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("OUTLOUD_CACHE")) as folder:
        for name, (shape, batch) in SHAPES.items():
            local = os.path.join(folder, name)
            os.makedirs(local)
            r = measure(binary, shape, batch, "file://" + local + "/", plain=local)
            rows.append((name, "file://", r))
            print(name, "file://", r, flush=True)
            shutil.rmtree(local)
        server, env = start_moto(folder)
        try:
            shape, batch = SHAPES["base"]
            r = measure(binary, shape, batch, "s3://bench/base", env=env)
            rows.append(("base", "s3:// (moto, loopback)", r))
            print("base s3://", r, flush=True)
        finally:
            server.kill()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    report = (
        "# Checkpoints\n\n"
        f"{datetime.date.today()} on {os.cpu_count()} cores, {cpu}; CPU, f32; median of 3 saves and loads "
        "of the model with its AdamW state (weights, both moments; SHA-256 of every file, manifest last); "
        "the plain write is one file of the same bytes to the same folder, without fsync, as the saves. "
        "The stall is what the training loop waits for a background checkpoint (copying the state to "
        "host memory; the writing thread does the rest), against one training step of that preset "
        "(small at batch 8, base at batch 1, context 256 and 512).\n\n"
        "| preset | params | MB | to | save MB/s | load MB/s | plain write MB/s | step ms | stall ms | stall / step |\n"
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|\n"
        + "".join(
            f"| {n} | {r['params']:,} | {r['mb']:,.0f} | {to} | {r['save_mb_s']:,.0f} | {r['load_mb_s']:,.0f} | "
            f"{'-' if r['plain_write_mb_s'] is None else format(r['plain_write_mb_s'], ',.0f')} | "
            f"{r['step_ms']:,.0f} | {r['stall_ms']:,.1f} | {100 * r['stall_share']:.2f}% |\n"
            for n, to, r in rows)
    )
    os.makedirs("benchmarks", exist_ok=True)
    with open(os.path.join("benchmarks", "checkpoint.md"), "w") as f:
        f.write(report)
    print(report)


if __name__ == "__main__":
    main()
