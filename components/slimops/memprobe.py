"""Peak memory of one model, measured in a fresh process so other models do not blur it.

``python -m slimops.memprobe MODEL_DIR BATCH [THREADS]`` prints JSON: the peak RSS (MB) while
loading the model and running one batch of sample inputs, above the RSS of the same
interpreter with the libraries imported but no model loaded.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def measure(model_dir, batch: int, threads: int | None) -> float | None:
    args = [sys.executable, "-m", "slimops.memprobe", str(model_dir), str(batch), str(threads or 0)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_high_water_mark() -> None:
    # Importing torch peaks above what a small model needs; start the high-water mark afresh.
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def main() -> None:
    model_dir, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) or None
    import onnxruntime  # noqa: F401  (count library import cost in the floor, not the model)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from slimops.handlers import describe, load
    from slimops.handlers.runtime import sample_batch

    info = describe(model_dir)
    _reset_high_water_mark()
    floor = _status_mb("VmRSS")
    model = load(model_dir, info, threads)
    model.predict(sample_batch(info, batch))
    print(json.dumps({"peak_mb": round(_status_mb("VmHWM") - floor, 1)}))


if __name__ == "__main__":
    main()
