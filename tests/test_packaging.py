"""Packaging: the sdist carries what the CUDA build and the tests need, a wheel built from it ships the
package with its license and py.typed, the pins agree with the declared dependencies, and the message
where the CUDA extension is missing says plainly what is missing and what would build it."""
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import recipe_kernels
from recipe_kernels import _backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME_VERSION = f"recipe_kernels-{recipe_kernels.__version__}"
# Build output and local state, never part of a release.
NOT_SOURCE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.o", ".hypothesis",
                                    ".pytest_cache", "gpu_out", "wheels")


def is_source_tree():
    return os.path.exists(os.path.join(ROOT, "setup.py")) and os.path.isdir(os.path.join(ROOT, "csrc"))


needs_source_tree = pytest.mark.skipif(not is_source_tree(), reason="needs the source tree (setup.py, csrc/)")


def source_files(*folders_and_patterns):
    """Paths relative to ROOT of the files in `folder` whose names end with `suffix`."""
    found = []
    for folder, suffixes in folders_and_patterns:
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith(suffixes):
                found.append(f"{folder}/{name}")
    return found


def copy_of_the_source_tree(parent):
    """Builds run in a copy, so that the tree gets no egg-info and a built _C in it is not seen."""
    tree = parent / "src"
    shutil.copytree(ROOT, tree, ignore=NOT_SOURCE)
    return tree


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    tree = copy_of_the_source_tree(tmp_path_factory.mktemp("tree"))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(dist)], cwd=tree, check=True,
                   capture_output=True, env={**os.environ, "RECIPE_KERNELS_BUILD_CUDA": "0"})
    (archive,) = dist.iterdir()
    return archive


@needs_source_tree
def test_the_sdist_ships_every_source_the_cuda_build_and_the_tests_need(sdist):
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(NAME_VERSION + "/") for name in archive.getnames()}
    needed = (["LICENSE", "README.md", "CHANGELOG.md", "requirements.txt", "pyproject.toml", "setup.py",
               "recipe_kernels/py.typed"]
              + source_files(("csrc", (".cu", ".cuh", ".h", ".cpp")), ("recipe_kernels", ".py"), ("tests", ".py"),
                             ("benchmarks", ".py"), ("docs", ".md")))
    assert "csrc/common.cuh" in needed and "csrc/codes.h" in needed and "tests/conftest.py" in needed
    assert sorted(set(needed) - names) == []
    assert [name for name in names if name.endswith((".so", ".o", ".pyc"))] == []


@needs_source_tree
def test_the_sdist_metadata_has_license_authors_classifiers_and_extras(sdist):
    with tarfile.open(sdist) as archive:
        metadata = archive.extractfile(f"{NAME_VERSION}/PKG-INFO").read().decode()
    assert "License-Expression: BSD-3-Clause" in metadata and "License-File: LICENSE" in metadata
    assert "Author: recipe_kernels contributors" in metadata
    assert "Classifier: Typing :: Typed" in metadata and re.search(r"^Keywords: .*dropout", metadata, re.M)
    extras = set(re.findall(r"^Provides-Extra: (\S+)", metadata, re.M))
    assert {"test", "demo", "bench"} <= extras
    for extra, needs in {"test": ["pytest", "hypothesis", "matplotlib", "scikit-learn", "tqdm"],
                         "demo": ["scikit-learn", "matplotlib", "tqdm"]}.items():
        for package in needs:
            assert f'Requires-Dist: {package}; extra == "{extra}"' in metadata


@needs_source_tree
def test_a_wheel_built_from_the_sdist_ships_the_package_its_license_and_py_typed(sdist, tmp_path):
    # Without the CUDA extension here (it takes minutes); .ci/run builds the same wheel with it and imports _C.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", "--no-index",
                    "-w", str(tmp_path), str(sdist)], check=True, capture_output=True,
                   env={**os.environ, "RECIPE_KERNELS_BUILD_CUDA": "0"})
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    package = {name for name in source_files(("recipe_kernels", ".py"))} | {"recipe_kernels/py.typed"}
    assert sorted(package - names) == []
    assert f"{NAME_VERSION}.dist-info/licenses/LICENSE" in names
    assert not any(name.startswith(("tests/", "csrc/", "benchmarks/")) for name in names)


@needs_source_tree
def test_the_editable_install_builds_where_there_is_no_nvcc(tmp_path):
    # The quick start's `pip install --no-build-isolation --no-deps -e .` on a machine without the CUDA toolkit,
    # through the same build hook pip calls, without installing anything.
    tree = copy_of_the_source_tree(tmp_path)
    path = os.pathsep.join(entry for entry in os.environ.get("PATH", "").split(os.pathsep)
                           if entry and not os.path.exists(os.path.join(entry, "nvcc")))
    env = {name: value for name, value in os.environ.items()
           if name not in ("CUDA_HOME", "CUDA_PATH", "RECIPE_KERNELS_BUILD_CUDA")}
    result = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                             "print(build_meta.build_editable(sys.argv[1]))", str(tmp_path / "out")],
                            cwd=tree, env={**env, "PATH": path}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
    assert "nvcc not found, skipping the CUDA extension" in result.stderr
    (wheel,) = (tmp_path / "out").glob("*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")  # nothing compiled, so nothing platform-specific


@needs_source_tree
def test_requirements_pin_every_dependency_and_extra_within_the_declared_ranges():
    tomllib = pytest.importorskip("tomllib")
    requirements = pytest.importorskip("packaging.requirements")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        project = tomllib.load(file)["project"]
    pins = {}
    with open(os.path.join(ROOT, "requirements.txt")) as file:
        for line in file:
            line = line.split("#")[0].strip()
            if line:
                requirement = requirements.Requirement(line)
                pins[requirement.name] = requirement.specifier
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    for entry in declared:
        requirement = requirements.Requirement(entry)
        assert requirement.name in pins, f"{requirement.name} is declared but not pinned in requirements.txt"
        (pin,) = [spec for spec in pins[requirement.name] if spec.operator == "=="]
        assert requirement.specifier.contains(pin.version), f"{requirement.name}=={pin.version} is outside {entry!r}"


def test_nn_declares_its_public_names():
    from recipe_kernels import nn

    defined = {name for name, value in vars(nn).items()
               if not name.startswith("_") and getattr(value, "__module__", None) == nn.__name__}
    assert sorted(nn.__all__) == sorted(defined)
    assert os.path.exists(os.path.join(os.path.dirname(recipe_kernels.__file__), "py.typed"))


@pytest.mark.parametrize("nvcc_found", [True, False])
def test_the_missing_extension_message_says_what_is_missing_and_what_would_build_it(monkeypatch, nvcc_found):
    monkeypatch.setattr(_backend, "_nvcc_found", lambda: nvcc_found)
    message = _backend._why_extension_missing(ModuleNotFoundError("No module named 'recipe_kernels._C'",
                                                                  name="recipe_kernels._C"))
    assert message.startswith("the CUDA extension recipe_kernels._C is not built")
    assert "only the 'cuda' backend needs it" in message
    if nvcc_found:
        assert "RECIPE_KERNELS_BUILD_CUDA=1 pip install --no-build-isolation --no-deps ." in message
    else:  # advice to build with a compiler the machine lacks would fail
        assert "RECIPE_KERNELS_BUILD_CUDA" not in message and "needs nvcc" in message


def test_the_missing_extension_message_names_a_build_for_another_python(tmp_path):
    (tmp_path / "_C.cpython-399-x86_64-linux-gnu.so").write_bytes(b"")
    message = _backend._why_extension_missing(ModuleNotFoundError("No module named 'recipe_kernels._C'",
                                                                  name="recipe_kernels._C"), str(tmp_path))
    assert message.startswith("the CUDA extension recipe_kernels._C is not built for this Python "
                              f"({sys.implementation.cache_tag}; found _C.cpython-399-x86_64-linux-gnu.so)")


def test_the_message_for_an_extension_that_fails_to_load_keeps_the_loader_error(monkeypatch):
    monkeypatch.setattr(_backend, "_nvcc_found", lambda: False)
    message = _backend._why_extension_missing(ImportError("undefined symbol: cudaLaunchKernel"))
    assert message.startswith("the CUDA extension recipe_kernels._C failed to load (undefined symbol")


# Hides a built _C from the import system, as on a machine where it was never built.
HIDE_EXTENSION = '''
import sys

class HideExtension:
    def find_spec(self, name, path=None, target=None):
        if name == "recipe_kernels._C":
            raise ModuleNotFoundError("No module named 'recipe_kernels._C'", name=name)
        return None

sys.meta_path.insert(0, HideExtension())
'''


def test_python_m_recipe_kernels_without_the_extension_says_it_is_not_built(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(HIDE_EXTENSION)
    package_parent = os.path.dirname(os.path.dirname(recipe_kernels.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), package_parent]), "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-m", "recipe_kernels"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "circular import" not in result.stdout + result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("CUDA extension:")]
    assert line.startswith("CUDA extension: the CUDA extension recipe_kernels._C is not built;"), line
    assert "backend cuda   unavailable: the CUDA extension recipe_kernels._C is not built" in result.stdout
