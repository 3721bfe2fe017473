"""Builds recipe_kernels and, with nvcc, its torch-free CUDA extension recipe_kernels._C.

Environment:
  RECIPE_KERNELS_BUILD_CUDA=1  build _C; a missing nvcc or a compile error fails the build
  RECIPE_KERNELS_BUILD_CUDA=0  skip _C (the package then runs on Triton and torch)
  (unset)                      build _C when nvcc is found, else skip it with one line
  RECIPE_KERNELS_CUDA_ARCHS    compute capabilities, default "80;90" (PTX of the last one is added)
  RECIPE_KERNELS_BUILD_JOBS    nvcc processes at once, default 2 (each can take a few GB of memory)
  CUDA_HOME                    where nvcc lives, else nvcc on PATH

_C uses nvcc and pybind11 only: no torch headers, no libtorch, the CUDA runtime linked
statically. It compiles without a GPU and imports on a machine without a driver.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

BUILD_CUDA = os.environ.get("RECIPE_KERNELS_BUILD_CUDA", "")
CUDA_ARCHS = [a.strip() for a in os.environ.get("RECIPE_KERNELS_CUDA_ARCHS", "80;90").split(";") if a.strip()]
BUILD_JOBS = os.environ.get("RECIPE_KERNELS_BUILD_JOBS", "2")
if not BUILD_JOBS.isdigit() or int(BUILD_JOBS) < 1:
    raise ValueError(f"RECIPE_KERNELS_BUILD_JOBS must be a positive integer, got {BUILD_JOBS!r}")
BUILD_JOBS = int(BUILD_JOBS)
SOURCES = sorted(glob.glob("csrc/*.cu")) + ["csrc/bindings.cpp"]  # one .cu per op family


def find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return os.path.join(cuda_home, "bin", "nvcc")
    return shutil.which("nvcc")


class NvccBuildExt(build_ext):
    """Compiles every source with nvcc (RECIPE_KERNELS_BUILD_JOBS at a time) and links a shared module with nvcc."""

    def build_extension(self, ext):
        nvcc = find_nvcc()
        if nvcc is None:  # only with RECIPE_KERNELS_BUILD_CUDA=1: otherwise the extension is not declared
            raise RuntimeError("RECIPE_KERNELS_BUILD_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
        import pybind11

        build_dir = os.path.abspath(self.build_temp)
        os.makedirs(build_dir, exist_ok=True)
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS]
        gencode.append(f"-gencode=arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}")
        includes = [f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}", "-Icsrc"]
        common = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden"]

        def compile_one(source):
            obj = os.path.join(build_dir, os.path.basename(source) + ".o")
            flags = gencode + ["--expt-relaxed-constexpr"] if source.endswith(".cu") else []
            self._run([nvcc, "-c", source, "-o", obj] + common + flags + includes)
            return obj

        with ThreadPoolExecutor(max_workers=BUILD_JOBS) as pool:
            objects = list(pool.map(compile_one, ext.sources))
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        self._run([nvcc, "-shared", "-cudart", "static", "-o", target] + objects + gencode)

    @staticmethod
    def _run(command):
        print(" ".join(command))
        result = subprocess.run(command)
        if result.returncode != 0:
            raise RuntimeError(f"recipe_kernels: CUDA build step failed ({' '.join(command[:3])} ...); "
                               "set RECIPE_KERNELS_BUILD_CUDA=0 to install without the CUDA extension")


# Decided here, not in build_ext: a declared extension that produces no file breaks wheel and editable builds.
if BUILD_CUDA == "0":
    print("recipe_kernels: RECIPE_KERNELS_BUILD_CUDA=0, skipping the CUDA extension", file=sys.stderr)
    ext_modules = []
elif BUILD_CUDA != "1" and find_nvcc() is None:
    print("recipe_kernels: nvcc not found, skipping the CUDA extension (Triton and torch backends only)",
          file=sys.stderr)
    ext_modules = []
else:
    ext_modules = [Extension("recipe_kernels._C", sources=SOURCES)]

setup(ext_modules=ext_modules, cmdclass={"build_ext": NvccBuildExt})
