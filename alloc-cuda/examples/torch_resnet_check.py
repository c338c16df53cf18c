"""Run torchvision's ResNet-50 (random weights, fixed seed) once with
PyTorch's default allocator and once with alloc-cuda plugged in, each in its
own process (an allocator must be chosen before the first CUDA allocation),
check that the outputs are equal and that the plug-in served the second
run's allocations (its statistics). Exits non-zero otherwise.

    cargo build -p alloc-cuda-capi --release
    python alloc-cuda/examples/torch_resnet_check.py [path/to/liballoc_cuda_capi.so]

Needs a CUDA device, torch and torchvision.
"""

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = sys.argv[1] if len(sys.argv) > 1 else os.path.join("target", "release", "liballoc_cuda_capi.so")

CHILD = r"""
import json, sys, torch, torchvision
lib, out, here = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path[:0] = [here, here + "/../python"]
stats = {}
if lib != "default":
    import alloc_cuda_torch
    alloc_cuda_torch.install(lib)
torch.manual_seed(0)
torch.backends.cudnn.deterministic = True
torch.backends.cudnn.benchmark = False
model = torchvision.models.resnet50(weights=None).cuda().eval()
x = torch.randn(16, 3, 224, 224, device="cuda")
with torch.no_grad():
    ys = [model(x) for _ in range(3)]
torch.save([y.cpu() for y in ys], out)
if lib != "default":
    stats = alloc_cuda_torch.memory_stats()
with open(out + ".json", "w") as f:
    json.dump(stats, f)
"""


def run(lib, out):
    subprocess.run([sys.executable, "-c", CHILD, lib, out, HERE], check=True)
    with open(out + ".json") as f:
        return json.load(f)


def main():
    import torch

    with tempfile.TemporaryDirectory() as d:
        run("default", f"{d}/default.pt")
        stats = run(os.path.abspath(LIB), f"{d}/ours.pt")
        a, b = torch.load(f"{d}/default.pt"), torch.load(f"{d}/ours.pt")
    equal = len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    served = stats.get("allocation.all.allocated", 0)
    print(f"check outputs equal: {'ok' if equal else 'FAILED'}")
    print(f"check the plug-in served the run: {'ok' if served > 100 else 'FAILED'} ({served} allocations, "
          f"peak reserved {stats.get('reserved_bytes.all.peak', 0)} B)")
    sys.exit(0 if equal and served > 100 else 1)


if __name__ == "__main__":
    main()
