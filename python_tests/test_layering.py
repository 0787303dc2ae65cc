"""The layering of ../shared/STYLE.md, read from the sources: who may touch what.

- ``dhvc_ext/ops`` is the only Python outside the tests that touches ``torch.ops.dhvc_ext`` (the tests check
  the raw schemas themselves, with opcheck). A dynamic ``getattr(torch.ops, ...)`` counts too.
- Between packages nothing imports a private name of ``dhvc_ext.mixture`` (its raw parameters are written by
  ``VMFMixture.set_parameters``).
- The references (``dhvc_ext.testing``) stand apart: no module of the runtime package imports them.
- The command line is a thin shell: ``dhvc_ext/cli.py`` parses and dispatches (at most 400 lines); the life
  of a run is ``dhvc_ext.runs``, and cli.py imports no training code at its top.
- One training step: only ``dhvc_ext.train`` (the Trainer's ``step`` and ``evaluate_loss``) calls the
  objective ``dhvc_loss``; the command line, the profiler and the benchmarks go through the Trainer.
"""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The Python of the runtime package and the scripts around it; the tests are not in it.
SOURCES = ("dhvc_ext", "benchmarks", "tools")


def _python_files(*skip):
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not any(rel.startswith(s) for s in skip):
                yield rel, path.read_text(encoding="utf-8")


def _code_lines(text):
    """The lines of a file without its comments and docstring lines (a docstring may name torch.ops)."""
    in_doc = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        quotes = stripped.count('"""') + stripped.count("'''")
        if in_doc or stripped.startswith(('"""', "'''")):
            in_doc = in_doc != (quotes % 2 == 1)
            continue
        yield number, line.split("#", 1)[0]


def test_only_ops_touches_torch_ops():
    pattern = re.compile(r"torch\s*\.\s*ops\b|getattr\(\s*torch\s*,\s*['\"]ops['\"]")
    found = [f"{rel}:{n}: {line.strip()}" for rel, text in _python_files("dhvc_ext/ops/")
             for n, line in _code_lines(text) if pattern.search(line)]
    assert not found, "torch.ops used outside dhvc_ext/ops (call the wrappers of dhvc_ext.ops):\n" + "\n".join(found)
    # The scan sees what it looks for: the ops package itself holds the handle.
    ops_hits = [rel for rel, text in _python_files() if rel.startswith("dhvc_ext/ops/")
                for _, line in _code_lines(text) if pattern.search(line)]
    assert "dhvc_ext/ops/vmfmm.py" in ops_hits and "dhvc_ext/ops/bessel.py" in ops_hits


def test_no_private_mixture_import():
    pattern = re.compile(r"from dhvc_ext\.mixture(?:\.\w+)? import[^\n]*\b_\w+|mixture\._(?:inverse_softplus|set_values)\b")
    found = [rel for rel, text in _python_files("dhvc_ext/mixture/") if pattern.search(text)]
    assert not found, f"private names of dhvc_ext.mixture used in {found} (use VMFMixture.set_parameters)"


def test_only_the_trainer_calls_the_objective():
    found = [f"{rel}:{n}: {line.strip()}" for rel, text in _python_files("dhvc_ext/models/", "dhvc_ext/train.py")
             for n, line in _code_lines(text) if re.search(r"\bdhvc_loss\b", line)]
    assert not found, "dhvc_loss called outside the Trainer (use Trainer.step / evaluate_loss):\n" + "\n".join(found)
    train = (ROOT / "dhvc_ext" / "train.py").read_text(encoding="utf-8")
    assert "def step(" in train and "def evaluate_loss(" in train and "dhvc_loss(" in train


def test_the_runtime_package_never_imports_the_references():
    pattern = re.compile(r"^\s*(?:from\s+dhvc_ext\s+import\s+[^\n]*\btesting\b|from\s+dhvc_ext\.testing\b|"
                         r"import\s+dhvc_ext\.testing\b)", re.M)
    runtime = [(rel, text) for rel, text in _python_files("dhvc_ext/testing/", "benchmarks/", "tools/")]
    assert any(rel == "dhvc_ext/cli.py" for rel, _ in runtime)
    found = [rel for rel, text in runtime if pattern.search(text)]
    assert not found, f"the runtime package imports dhvc_ext.testing in {found}"
    assert not (ROOT / "dhvc_ext" / "reference.py").exists()
    # what it looks for is found where it is: the benchmarks import the references
    assert pattern.search((ROOT / "benchmarks" / "conftest.py").read_text(encoding="utf-8"))


def test_the_command_line_is_a_thin_shell():
    text = (ROOT / "dhvc_ext" / "cli.py").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 400
    # the run's life is elsewhere: no checkpoint writes, signal handlers or training loops in cli.py
    for word in (r"signal\.signal\(", r"checkpoint\.save\b(?!_)", r"trainer\.fit\(", r"\.step\(", "atomic_write"):
        assert not re.search(word, text), word
    runs = (ROOT / "dhvc_ext" / "runs.py").read_text(encoding="utf-8")
    assert "def train_command(" in runs and "trainer.fit(" in runs
