"""Build the dhvc_ext extension against the torch that is installed (never an isolated build).

    pip install --no-build-isolation -e .      # or: pip install --no-build-isolation .

CUDA sources are compiled when torch has CUDA, CUDA_HOME is found and a GPU is visible, or when FORCE_CUDA=1
(cross-compiling on a machine without a GPU); FORCE_ONLY_CPU=1 skips them. Every decision is printed.
Other switches: TORCH_CUDA_ARCH_LIST (torch's), MAX_JOBS (parallel compile jobs), DHVC_DEBUG=1 (-O0 -g).

A compiled build is tied to the torch it was compiled against (torch's C++ ABI changes between minor
versions): it records that torch in dhvc_ext/_build_info.py, which dhvc_ext checks at import
(dhvc_ext/_torch_check.py), and its metadata requires torch==<major>.<minor>.*. The source distribution
(`python -m build --sdist`, files from MANIFEST.in) compiles nothing and needs no torch.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

# The commands that need no torch: the sdist, and the egg_info run a build backend makes before any build.
# A wheel's metadata (dist_info) names the torch it needs, so it does: pip then stops before it resolves the
# dependencies (and fetches some torch) when the build would fail anyway.
SDIST = "sdist" in sys.argv[1:]
NO_TORCH_OK = SDIST or "egg_info" in sys.argv[1:]

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - the message is the point
    if not NO_TORCH_OK:
        sys.exit(
            "dhvc-ext builds against the torch it will run with, and none is installed here.\n"
            "Install torch first (for example `pip install torch==2.13.0` for the CPU build), then run\n"
            "`pip install --no-build-isolation .` so the extension links against that torch."
        )
    torch = None

ROOT = os.path.dirname(os.path.abspath(__file__))

# The runtime dependencies besides torch (pyproject.toml declares `dependencies` dynamic for the torch pin).
RUNTIME_DEPS = [
    "numpy>=1.23",
    "scipy>=1.10",
    "scikit-learn>=1.2",
    "tqdm>=4.60",
    "matplotlib>=3.6",
    "umap-learn>=0.5",  # the manifold start of the default cluster_init="best" (dhvc_ext.manifold)
    "tomli>=1.1; python_version < '3.11'",
]


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


def torch_requirement():
    """The sdist runs on any torch it is built against; a compiled build only on its own major.minor."""
    if SDIST or torch is None:
        return "torch>=2.4"
    major, minor = str(torch.__version__).split(".")[:2]
    return f"torch=={major}.{minor}.*"


BUILD_INFO = '''"""Written by setup.py when dhvc_ext._C was compiled (not in git): the torch it is tied to."""
TORCH_VERSION = {version!r}
'''


if torch is not None:

    class BuildExt(BuildExtension.with_options(use_ninja=True)):
        """torch's build_ext, which also writes _build_info.py beside _C (in place for an editable build)."""

        def build_info_path(self):
            return os.path.join(os.path.dirname(self.get_ext_fullpath("dhvc_ext._C")), "_build_info.py")

        def run(self):
            super().run()
            path = self.build_info_path()
            with open(path, "w") as f:
                f.write(BUILD_INFO.format(version=str(torch.__version__)))
            say(f"recorded torch {torch.__version__} in {path}")

        def get_outputs(self):
            return super().get_outputs() + [self.build_info_path()]


say(f"requires {torch_requirement()}")
setup(
    packages=find_packages(include=["dhvc_ext", "dhvc_ext.*"]),
    install_requires=[torch_requirement()] + RUNTIME_DEPS,
    ext_modules=[] if torch is None or SDIST else extensions(),
    cmdclass={} if torch is None else {"build_ext": BuildExt},
)
