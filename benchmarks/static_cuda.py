"""What the compiled CUDA kernels of recipe_kernels._C say about themselves, with no GPU.

    python benchmarks/static_cuda.py [--json] [--csv PATH]

Reads the sm_90 code in the built extension (`RECIPE_KERNELS_BUILD_CUDA=1`, as CI builds it) with
cuobjdump: per kernel, registers, stack (local memory: spills, or arrays the compiler could not
keep in registers), shared memory, the widest global load and store, local-memory accesses
(LDL/STL) and the instructions in its code. A kernel that dispatches on a runtime dtype holds each
dtype's path: its widest access is the widest among them. Unlike benchmarks/static_model.py it cannot drive
the launches (the _C launchers need a GPU to launch), so it reports the code's facts per
kernel, not a prediction per benchmark case.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# This checkout's package, not whichever one is installed.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sass  # noqa: E402
from common import write_table  # noqa: E402
from standin_driver import cuobjdump  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATIC_CUDA_CSV = os.path.join(ROOT, "benchmarks", "results", "static_cuda.csv")
ARCH = "sm_90"
_RESOURCES = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_FUNCTION = re.compile(r"\n\s*Function : (\S+)\n")
_ARCH_HEADER = re.compile(r"code for (sm_\d+)")


def extension_path() -> str:
    """The built _C next to the package sources (an in-place or editable build)."""
    found = glob.glob(os.path.join(ROOT, "recipe_kernels", "_C*.so"))
    if not found:
        raise SystemExit("recipe_kernels/_C is not built here; build it with RECIPE_KERNELS_BUILD_CUDA=1 "
                         "python setup.py build_ext --inplace")
    return found[0]


def readable_name(mangled: str) -> str:
    """A kernel's name and template arguments, shortened: the file's anonymous namespace dropped."""
    demangled = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip() or mangled
    demangled = re.sub(r"recipe_kernels::\(anonymous namespace\)::|recipe_kernels::", "", demangled)
    return re.sub(r"\(.*\)$", "", demangled)  # the parameter list


def _sass_by_kernel(text):
    """{mangled name: SASS text} for the ARCH code in cuobjdump -sass output."""
    kernels, arch = {}, None
    pieces = re.split(r"(\n\s*Function : \S+\n|code for sm_\d+)", text)
    name = None
    for piece in pieces:
        header = _ARCH_HEADER.match(piece.strip())
        if header:
            arch, name = header.group(1), None
        elif _FUNCTION.match(piece):
            name = _FUNCTION.match(piece).group(1)
        elif name and arch == ARCH:
            kernels[name] = piece
    return kernels


def rows(path=None):
    path = path or extension_path()
    resources = subprocess.run([cuobjdump(), "--dump-resource-usage", "-arch", ARCH, path], capture_output=True,
                               text=True, check=True).stdout
    code = _sass_by_kernel(subprocess.run([cuobjdump(), "-sass", "-arch", ARCH, path], capture_output=True,
                                          text=True, check=True).stdout)
    result = []
    for mangled, registers, stack, shared, local in _RESOURCES.findall(resources):
        instructions = sass.parse(code.get(mangled, ""))
        loads = [sass.global_access_bits(i) for i in instructions if i.opcode.startswith("LDG")]
        stores = [sass.global_access_bits(i) for i in instructions if i.opcode.startswith("STG")]
        result.append({
            "kernel": readable_name(mangled), "arch": ARCH, "registers": int(registers), "stack": int(stack),
            "shared": int(shared), "local": int(local),
            "local_accesses": sum(i.opcode.startswith(("LDL", "STL")) for i in instructions),
            "widest_load_bits": max(loads, default=0), "widest_store_bits": max(stores, default=0),
            "sass_instructions": len(instructions)})
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=STATIC_CUDA_CSV, help=f"where to write the rows (default {STATIC_CUDA_CSV})")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (for tests), write no CSV")
    args = parser.parse_args()
    found = rows()
    if args.json:
        print(json.dumps(found))
        return
    print(f"{'kernel (sm_90 code in _C)':<90} {'regs':>4} {'stack':>5} {'LDL/STL':>7} {'ld/st bits':>10} {'SASS':>5}")
    for row in found:
        print(f"{row['kernel'][:90]:<90} {row['registers']:>4} {row['stack']:>5} {row['local_accesses']:>7} "
              f"{row['widest_load_bits']:>4}/{row['widest_store_bits']:<5} {row['sass_instructions']:>5}")
    write_table(args.csv, found)


if __name__ == "__main__":
    main()
