"""The import guard: a build of dhvc_ext for another torch major.minor fails at import with an ImportError that
names both versions and the rebuild command (dhvc_ext/_torch_check.py, setup.py's _build_info.py)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dhvc_ext
from dhvc_ext._torch_check import REBUILD, check_torch

PACKAGE = Path(dhvc_ext.__file__).parent
MAJOR, MINOR = (int(p) for p in str(torch.__version__).split(".")[:2])
OTHER_TORCH = f"{MAJOR}.{MINOR + 1}.0+cu130"


@pytest.mark.parametrize("built, running", [
    ("2.13.0+cpu", "2.13.0+cpu"),
    ("2.13.0+cpu", "2.13.1"),         # a patch release keeps the ABI
    ("2.13.0", "2.13.0+cu130"),       # the local label is not the ABI
])
def test_same_major_minor_passes(built, running):
    check_torch(built, running)


@pytest.mark.parametrize("built, running", [
    ("2.13.0+cpu", "2.14.1+cu130"),
    ("2.14.0", "2.13.0"),
    ("2.13.0", "3.13.0"),
])
def test_other_major_minor_raises_with_both_versions_and_the_fix(built, running):
    with pytest.raises(ImportError) as info:
        check_torch(built, running)
    msg = str(info.value)
    assert f"compiled against torch {built}" in msg and f"torch {running} is running" in msg
    assert REBUILD in msg and "--no-build-isolation" in msg
    assert f"torch=={built[:4]}.*" in msg


def test_unreadable_version_raises():
    with pytest.raises(ImportError, match="cannot read torch versions"):
        check_torch("unknown", "2.13.0")


def test_this_build_recorded_the_running_torch():
    try:
        from dhvc_ext._build_info import TORCH_VERSION
    except ModuleNotFoundError:
        pytest.skip("this build predates setup.py recording its torch (dhvc_ext/_build_info.py): `make build`")
    assert TORCH_VERSION == str(torch.__version__)


def _import_copy(tmp_path, recorded):
    """Import a copy of the package whose _build_info.py records ``recorded`` and whose _C is not a library,
    so that only a guard that runs before _C is loaded can give its own message."""
    copy = tmp_path / "dhvc_ext"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so", "_build_info.py"))
    (copy / "_build_info.py").write_text(f"TORCH_VERSION = {recorded!r}\n")
    (copy / Path(dhvc_ext._C.__file__).name).write_text("not a shared library\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    return subprocess.run([sys.executable, "-c", "import dhvc_ext"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_import_of_a_build_for_another_torch_raises_before_loading_the_kernels(tmp_path):
    result = _import_copy(tmp_path, OTHER_TORCH)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()
    assert any(line.startswith("ImportError: dhvc_ext was compiled against torch " + OTHER_TORCH) for line in last)
    assert f"torch {torch.__version__} is running" in result.stderr
    assert "pip install --no-build-isolation" in result.stderr
    assert "not a shared library" not in result.stderr and "invalid ELF header" not in result.stderr


def test_import_of_a_build_for_this_torch_goes_on_to_load_the_kernels(tmp_path):
    result = _import_copy(tmp_path, f"{MAJOR}.{MINOR}.99")
    assert result.returncode != 0
    # The guard let it through: the failure is the (fake) library's, not the guard's.
    assert "compiled against torch" not in result.stderr
    assert "dhvc_ext._C" in result.stderr
