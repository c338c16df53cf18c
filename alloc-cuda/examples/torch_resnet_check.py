"""Run torchvision's ResNet-50 (random weights, fixed seed) once with
PyTorch's default allocator and once with alloc-cuda plugged in, each in its
own process (an allocator must be chosen before the first CUDA allocation),
and check that the outputs are equal.

    cargo build -p alloc-cuda --release
    python alloc-cuda/examples/torch_resnet_check.py [path/to/liballoc_cuda.so]

Needs a CUDA device, torch and torchvision.
"""

import subprocess
import sys
import tempfile

LIB = sys.argv[1] if len(sys.argv) > 1 else "target/release/liballoc_cuda.so"

CHILD = r"""
import sys, torch, torchvision
lib, out = sys.argv[1], sys.argv[2]
if lib != "default":
    a = torch.cuda.memory.CUDAPluggableAllocator(lib, "alloc_cuda_malloc", "alloc_cuda_free")
    torch.cuda.memory.change_current_allocator(a)
torch.manual_seed(0)
torch.backends.cudnn.deterministic = True
torch.backends.cudnn.benchmark = False
model = torchvision.models.resnet50(weights=None).cuda().eval()
x = torch.randn(16, 3, 224, 224, device="cuda")
with torch.no_grad():
    ys = [model(x) for _ in range(3)]
torch.save([y.cpu() for y in ys], out)
"""


def run(lib, out):
    subprocess.run([sys.executable, "-c", CHILD, lib, out], check=True)


def main():
    import torch

    with tempfile.TemporaryDirectory() as d:
        run("default", f"{d}/default.pt")
        run(LIB, f"{d}/ours.pt")
        a, b = torch.load(f"{d}/default.pt"), torch.load(f"{d}/ours.pt")
    equal = all(torch.equal(x, y) for x, y in zip(a, b))
    print("outputs equal:", equal)
    sys.exit(0 if equal else 1)


if __name__ == "__main__":
    main()
