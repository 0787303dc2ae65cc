"""Build the dhvc_ext extension against the torch that is installed (never an isolated build).

    pip install --no-build-isolation -e .      # or: pip install --no-build-isolation .

CUDA sources are compiled when torch has CUDA, CUDA_HOME is found and a GPU is visible, or when FORCE_CUDA=1
(cross-compiling on a machine without a GPU); FORCE_ONLY_CPU=1 skips them. Every decision is printed.
Other switches: TORCH_CUDA_ARCH_LIST (torch's), MAX_JOBS (parallel compile jobs), DHVC_DEBUG=1 (-O0 -g).
"""
import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - the message is the point
    sys.exit(
        "dhvc-ext builds against the torch it will run with, and none is installed here.\n"
        "Install torch first (for example `pip install torch==2.13.0` for the CPU build), then run\n"
        "`pip install --no-build-isolation .` so the extension links against that torch."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def say(msg):
    print(f"[dhvc-ext setup] {msg}", flush=True)


def flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def want_cuda():
    if flag("FORCE_ONLY_CPU"):
        say("FORCE_ONLY_CPU=1: building the CPU kernels only")
        return False
    if flag("FORCE_CUDA"):
        if CUDA_HOME is None:
            sys.exit("[dhvc-ext setup] FORCE_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME)")
        say(f"FORCE_CUDA=1: building the CUDA kernels with the toolkit at {CUDA_HOME}")
        return True
    if torch.version.cuda is None:
        say(f"torch {torch.__version__} has no CUDA: building the CPU kernels only")
        return False
    if CUDA_HOME is None:
        say(f"torch {torch.__version__} has CUDA {torch.version.cuda} but no CUDA toolkit (nvcc) was found: "
            "building the CPU kernels only (set CUDA_HOME to build the CUDA ones)")
        return False
    if not torch.cuda.is_available():
        say("torch has CUDA and a toolkit was found, but no GPU is visible: building the CPU kernels only "
            "(set FORCE_CUDA=1 to build the CUDA kernels anyway)")
        return False
    say(f"torch {torch.__version__} with CUDA {torch.version.cuda}, toolkit at {CUDA_HOME}, GPU visible: "
        "building the CUDA kernels")
    return True


def extensions():
    use_cuda = want_cuda()
    debug = flag("DHVC_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    # No fast-math anywhere: the kernels depend on IEEE semantics (NaN and inf edge cases, exact
    # cancellation-free rearrangements).
    extra = {"cxx": opt + ["-Wall", "-Wno-unused-function"]}
    ext_cls = CppExtension
    if use_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        extra["nvcc"] = opt + ["-lineinfo"]
        ext_cls = CUDAExtension
        say(f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(torch default: the visible GPUs)')}")
    say(f"sources: {', '.join(sources)}")
    say(f"optimisation: {'debug (-O0 -g)' if debug else '-O3'}")
    return [
        ext_cls(
            name="dhvc_ext._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc", "include")],
            extra_compile_args=extra,
        )
    ]


setup(
    packages=find_packages(include=["dhvc_ext", "dhvc_ext.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
