"""The compiled kernels are tied to the torch they were compiled against.

torch's C++ ABI changes between minor versions, so ``dhvc_ext._C`` built against torch 2.13 fails to load
under torch 2.14 with an undefined symbol, or loads and crashes. setup.py records the build's torch in
``dhvc_ext/_build_info.py``; this check runs before ``_C`` is loaded and turns a major.minor mismatch into an
ImportError that says what to do. Patch releases (2.13.0 vs 2.13.1) and local labels (+cpu, +cu130) pass.
"""
import re

REBUILD = (
    "pip install --no-build-isolation --no-binary dhvc-ext --force-reinstall --no-deps dhvc-ext\n"
    "(from a source tree: `pip install --no-build-isolation -e .`, or `make build`)"
)


def _major_minor(version):
    match = re.match(r"(\d+)\.(\d+)", str(version))
    return (int(match[1]), int(match[2])) if match else None


def check_torch(built, running):
    """Raise ImportError when the ``built`` and ``running`` torch versions differ in major.minor."""
    want, have = _major_minor(built), _major_minor(running)
    if want is None or have is None:
        raise ImportError(f"dhvc_ext: cannot read torch versions {built!r} (build) and {running!r} (running)")
    if want != have:
        raise ImportError(
            f"dhvc_ext was compiled against torch {built}, but torch {running} is running: its kernels are "
            f"tied to torch {want[0]}.{want[1]}'s C++ ABI. Rebuild dhvc_ext against this torch:\n"
            f"    {REBUILD}\n"
            f"or install torch=={want[0]}.{want[1]}.* to match the build."
        )


def check_build():
    """Compare the build's recorded torch with the running one; a build that recorded none is not checked."""
    try:
        from dhvc_ext._build_info import TORCH_VERSION
    except ModuleNotFoundError as exc:
        if exc.name != "dhvc_ext._build_info":
            raise
        return
    import torch

    check_torch(TORCH_VERSION, torch.__version__)
