"""python -m recipe_kernels: versions, the backends this machine can run, and a dropout self-check.

Without a GPU the Triton kernels run through Triton's interpreter and the CUDA
extension's host Philox is checked.
"""
import os
import platform
import sys

import torch

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    # `python -m` imported the package, and with it the Triton kernels, before this line:
    # start again with the interpreter switched on, so that the Triton backend can be checked.
    os.environ["TRITON_INTERPRET"] = "1"
    os.execv(sys.executable, [sys.executable, "-m", "recipe_kernels"] + sys.argv[1:])

import numpy as np  # noqa: E402
import triton  # noqa: E402

import recipe_kernels  # noqa: E402
from recipe_kernels import _backend  # noqa: E402
from recipe_kernels._philox import drop_threshold  # noqa: E402


def main() -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"recipe_kernels {recipe_kernels.__version__}  python {platform.python_version()}  "
          f"torch {torch.__version__}  triton {triton.__version__}")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu (no GPU visible)'}")
    if _backend._C is None:
        print(f"CUDA extension: {_backend.CUDA_EXTENSION_ERROR}")
    else:
        print("CUDA extension: built")

    available = []
    for backend in _backend.BACKENDS:
        reason = _backend.why_unavailable(backend, device)
        note = " (Triton interpreter)" if backend == "triton" and device.type == "cpu" and reason is None else ""
        print(f"  backend {backend:<6} {'available' + note if reason is None else 'unavailable: ' + reason}")
        if reason is None:
            available.append(backend)

    # Self-check: every available backend draws the same dropout mask from the same seed.
    p, shape = 0.3, (7, 1000)
    x = torch.ones(shape, device=device)
    masks = {}
    for backend in available:
        torch.manual_seed(2024)
        masks[backend] = recipe_kernels.dropout(x, p, backend=backend) != 0
    torch.manual_seed(2024)
    seed = int(torch.randint(-(1 << 63), (1 << 63) - 1, (1,), dtype=torch.int64, device=device).item())
    if _backend._C is not None:
        host_keep = _backend._C.keep_mask_host(seed, 0, x.numel(), drop_threshold(p))
        masks["cuda host Philox"] = torch.from_numpy(np.asarray(host_keep)).reshape(shape).to(device)
    reference_name, reference_mask = next(iter(masks.items()))
    ok = True
    for name, mask in masks.items():
        same = torch.equal(mask, reference_mask)
        ok &= same
        print(f"  dropout mask, {name:<16} keep rate {mask.float().mean().item():.4f}  "
              f"{'identical to ' + reference_name if same else 'DIFFERS from ' + reference_name}")
    print("self-check: " + ("passed" if ok and len(masks) > 1 else "FAILED" if not ok else "only one backend to compare"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
