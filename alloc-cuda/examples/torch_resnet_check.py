"""Run torchvision's ResNet-50 (random weights, fixed seed) once with
PyTorch's default allocator and once with alloc-cuda plugged in, each in its
own process (an allocator must be chosen before the first CUDA allocation),
check that the outputs are equal and that the plug-in served the second
run's allocations (its statistics). Exits non-zero otherwise.

    cargo build -p alloc-cuda-capi --release
    python alloc-cuda/examples/torch_resnet_check.py [path/to/liballoc_cuda_capi.so]

Needs a CUDA device, torch and torchvision (without them it prints
`SKIP: ...` and exits with status 3). torch is imported once per run, in the
two child processes only; the second compares its outputs with the first's.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

SKIP_EXIT = 3

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = sys.argv[1] if len(sys.argv) > 1 else os.path.join("target", "release", "liballoc_cuda_capi.so")

CHILD = r"""
import json, os, sys
lib, out, here, reference = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
sys.path[:0] = [here, here + "/../python"]
import alloc_cuda_torch
torch = alloc_cuda_torch.require_torch_gpu()
import torchvision
stats = {}
if lib != "default":
    alloc_cuda_torch.install(lib)
torch.manual_seed(0)
torch.backends.cudnn.deterministic = True
torch.backends.cudnn.benchmark = False
model = torchvision.models.resnet50(weights=None).cuda().eval()
x = torch.randn(16, 3, 224, 224, device="cuda")
with torch.no_grad():
    ys = [model(x) for _ in range(3)]
ys = [y.cpu() for y in ys]
torch.save(ys, out)
if lib != "default":
    stats = alloc_cuda_torch.memory_stats()
if reference != "-":
    ref = torch.load(reference)
    stats["outputs_equal"] = len(ref) == len(ys) and all(torch.equal(a, b) for a, b in zip(ref, ys))
with open(out + ".json", "w") as f:
    json.dump(stats, f)
"""


def run(lib, out, reference="-"):
    r = subprocess.run([sys.executable, "-c", CHILD, lib, out, HERE, reference])
    if r.returncode == SKIP_EXIT:
        sys.exit(SKIP_EXIT)  # the child printed why
    if r.returncode != 0:
        print(f"check run with {lib}: FAILED (exit {r.returncode})")
        sys.exit(1)
    with open(out + ".json") as f:
        return json.load(f)


def main():
    if importlib.util.find_spec("torchvision") is None:
        print("SKIP: torchvision is not installed", flush=True)
        sys.exit(SKIP_EXIT)
    with tempfile.TemporaryDirectory() as d:
        run("default", f"{d}/default.pt")
        stats = run(os.path.abspath(LIB), f"{d}/ours.pt", reference=f"{d}/default.pt")
    equal = stats.get("outputs_equal", False)
    served = stats.get("allocation.all.allocated", 0)
    print(f"check outputs equal: {'ok' if equal else 'FAILED'}")
    print(f"check the plug-in served the run: {'ok' if served > 100 else 'FAILED'} ({served} allocations, "
          f"peak reserved {stats.get('reserved_bytes.all.peak', 0)} B)")
    sys.exit(0 if equal and served > 100 else 1)


if __name__ == "__main__":
    main()
