"""Builds jebm and jebm_kernels; compiles csrc/ into jebm_kernels._C (CPU, OpenMP) where a C++
compiler is found, and csrc/*.cu into jebm_kernels._cuda where a CUDA toolkit (nvcc) is found.
A failed compile does not fail the install: jebm_kernels then warns once and uses the reference
backend (no _C) or reports the cuda backend unavailable (no _cuda). Before compiling, the build
writes csrc/generated/activation_codes.h from jebm_kernels/activation_table.py (the one table of
activation codes; csrc/generate_activation_codes.py, run with runpy: no torch needed).

Environment:
  JEBM_BUILD_CPU=0     skip the CPU extension.
  JEBM_CUDA            unset: build the CUDA extension if nvcc is found (on PATH, in $CUDA_HOME/bin
                       or /usr/local/cuda/bin), warn and go on if that fails;
                       1: build it, and fail the install if it cannot be built; 0: do not build it.
  JEBM_CUDA_ARCH       GPU architectures, default "80;90" (A100, H100): SASS for each, plus PTX
                       of the last so newer GPUs JIT-compile it.
"""
import glob
import os
import runpy
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# csrc/generated/activation_codes.h: the activation codes, written from jebm_kernels/activation_table.py
# before anything in csrc compiles (the generator is shared with the tests that compile csrc; it
# executes the table with runpy, so this build needs no torch)
GENERATOR = os.path.join("csrc", "generate_activation_codes.py")
GENERATED = [os.path.join("csrc", "generated", "activation_codes.h")]
# what csrc's objects depend on besides their sources: a change to any of them rebuilds the extensions
HEADERS = sorted(glob.glob(os.path.join("csrc", "*.h")) + GENERATED
                 + [GENERATOR, os.path.join("jebm_kernels", "activation_table.py")])


def generate_headers():
    runpy.run_path(GENERATOR)["write_header"](os.path.dirname(os.path.abspath(__file__)))


class OptionalBuildExt(build_ext):
    """Build the extensions, but let the install succeed without them."""

    def run(self):
        try:
            generate_headers()
            super().run()
        except Exception as exc:  # no compiler at all
            if any(getattr(e, "required", False) for e in self.extensions):
                raise
            self._warn(exc)

    def build_extensions(self):
        # nvcc runs in the background while the host compiler builds the CPU extension (which
        # compiles its files one after another): on 2 cores that hides most of the CUDA build
        for ext in self.extensions:
            if getattr(ext, "cuda_sources", None):
                try:
                    ext.nvcc_jobs = self._start_nvcc(ext)
                except Exception as exc:  # reported when the extension is built
                    ext.nvcc_error = exc
        super().build_extensions()

    def build_extension(self, ext):
        try:
            if getattr(ext, "cuda_sources", None):
                self._finish_nvcc(ext)
            super().build_extension(ext)
            self._built = getattr(self, "_built", set()) | {ext.name}
        except Exception as exc:
            if getattr(ext, "required", False):
                raise
            self._warn(exc, ext.name)

    def copy_extensions_to_source(self):  # --inplace / editable: only what was built
        built = [e for e in self.extensions if e.name in getattr(self, "_built", set())]
        every, self.extensions = self.extensions, built
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = every

    @staticmethod
    def _warn(exc, name="the C++ extension"):
        what = ("the cuda backend will be unavailable" if name.endswith("_cuda")
                else "jebm_kernels will use the reference backend")
        sys.stderr.write(f"\nWARNING: could not build {name} ({exc}); {what}.\n\n")

    def _start_nvcc(self, ext):
        """nvcc -c every .cu file, all at once; objects newer than their source and every header
        are reused (editable re-installs)."""
        tmp = os.path.abspath(os.path.join(self.build_temp, "cuda"))
        os.makedirs(tmp, exist_ok=True)
        newest_header = max((os.path.getmtime(h) for h in HEADERS if os.path.exists(h)), default=0)
        jobs = []
        for src in ext.cuda_sources:
            obj = os.path.join(tmp, os.path.basename(src)[:-3] + ".o")
            proc = None
            if not (os.path.exists(obj) and os.path.getmtime(obj) > max(os.path.getmtime(src), newest_header)):
                cmd = nvcc_command(ext.nvcc, src, obj)
                print(" ".join(cmd))
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            jobs.append((src, obj, proc))
        return jobs

    def _finish_nvcc(self, ext):
        """Waits for the nvcc jobs and hands their objects to the linker."""
        if getattr(ext, "nvcc_error", None) is not None:
            raise ext.nvcc_error
        failed = []
        for src, obj, proc in ext.nvcc_jobs:
            if proc is not None:
                out, _ = proc.communicate()
                if proc.returncode:
                    failed.append(f"{src}:\n{out}")
        if failed:
            raise RuntimeError("nvcc failed:\n" + "\n".join(failed))
        ext.extra_objects = list(ext.extra_objects or []) + [obj for _, obj, _ in ext.nvcc_jobs]


def cpu_extension():
    sources = sorted(s for s in glob.glob("csrc/*.cpp") if not os.path.basename(s).startswith("cuda_"))
    if not sources or os.environ.get("JEBM_BUILD_CPU", "1") == "0":
        return []
    from pybind11.setup_helpers import Pybind11Extension
    return [Pybind11Extension(
        "jebm_kernels._C",
        sources,
        include_dirs=["csrc"],
        depends=HEADERS,  # the kernels live in headers: rebuild when they change
        cxx_std=17,
        extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off"],
        extra_link_args=["-fopenmp"],
    )]


def find_nvcc():
    """The nvcc to build with, or None."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def cuda_archs():
    archs = [a.strip() for a in os.environ.get("JEBM_CUDA_ARCH", "80;90").replace(",", ";").split(";") if a.strip()]
    if not archs or not all(a.isdigit() for a in archs):
        raise ValueError(f"JEBM_CUDA_ARCH must list compute capabilities like '80;90', got "
                         f"{os.environ.get('JEBM_CUDA_ARCH')!r}")
    return archs


def nvcc_command(nvcc, src, obj):
    """One nvcc call for every architecture (--threads: archs compiled in parallel).
    --fmad=false: no implicit multiply-add contraction, so element-wise formulas round as the
    reference's separate torch kernels do (the GEMMs use explicit fmaf); no fast-math."""
    archs = cuda_archs()
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "--fmad=false", "--threads", "0",
            "-Xcompiler", "-fPIC", "-Icsrc", *gencode]


def cudart_dirs(nvcc):
    """The directory of libcudart_static.a: under $CUDA_HOME, beside nvcc, or where nvcc itself
    links from (`nvcc --dryrun` prints its TOP, which also sees through wrapper scripts)."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
             os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True,
                             timeout=60)
        homes += [line.split("=", 1)[1].strip() for line in (dry.stdout + dry.stderr).splitlines()
                  if line.startswith("#$ TOP=")]
    except (OSError, subprocess.SubprocessError):
        pass
    homes.append("/usr/local/cuda")
    for home in filter(None, homes):
        for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
                    os.path.join("targets", "sbsa-linux", "lib")):
            d = os.path.realpath(os.path.join(home, sub))
            if os.path.exists(os.path.join(d, "libcudart_static.a")):
                return [d]
    return []


def cuda_extension():
    """jebm_kernels._cuda: the bindings (host compiler, pybind11, no CUDA header) linked with the
    nvcc-compiled kernels and the static CUDA runtime, so neither torch's CUDA build nor a
    libcudart on the library path is needed."""
    mode = os.environ.get("JEBM_CUDA", "").strip()
    if mode not in ("", "0", "1"):
        raise ValueError(f"JEBM_CUDA must be unset, 0 (do not build) or 1 (build, or fail), got {mode!r}")
    cu = sorted(glob.glob("csrc/*.cu"))
    if mode == "0" or not cu:
        return []
    nvcc = find_nvcc()
    if nvcc is None:
        if mode == "1":
            raise RuntimeError("JEBM_CUDA=1 but no nvcc was found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
        return []
    libdirs = cudart_dirs(nvcc)
    if not libdirs:
        if mode == "1":
            raise RuntimeError(f"JEBM_CUDA=1 but libcudart_static.a was not found for {nvcc}")
        return []
    from pybind11.setup_helpers import Pybind11Extension
    ext = Pybind11Extension(
        "jebm_kernels._cuda",
        ["csrc/cuda_bindings.cpp"],
        include_dirs=["csrc"],
        depends=HEADERS + cu,
        cxx_std=17,
        extra_compile_args=["-O2"],
        library_dirs=libdirs,
        libraries=["cudart_static", "dl", "pthread", "rt"],
    )
    ext.cuda_sources = cu
    ext.nvcc = nvcc
    ext.required = mode == "1"
    return [ext]


# The package's metadata (name, version, dependencies, extras, the ``jebm`` command) is in
# pyproject.toml; this file adds only the compiled extensions.
setup(
    ext_modules=cpu_extension() + cuda_extension(),
    cmdclass={"build_ext": OptionalBuildExt},
)
