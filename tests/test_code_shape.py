"""The package stays readable: small functions, modules of one screenful of ideas.

A function's length is its lines without its docstring (the docstring holds the
math and shapes, which we do not want to cut); a module's is its whole file.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fedrec"
MAX_FUNCTION, MAX_MODULE = 80, 500


def function_lengths(text: str) -> dict[str, int]:
    """``{qualified name: lines without the docstring}`` of every function."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = f"{prefix}{getattr(child, 'name', '')}"
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (child.end_lineno or child.lineno) - child.lineno + 1
                first = child.body[0]
                if isinstance(first, ast.Expr) and isinstance(
                    getattr(first, "value", None), ast.Constant
                ):
                    n -= (first.end_lineno or first.lineno) - first.lineno + 1
                out[name] = n
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(text), "")
    return out


def test_function_lengths_count_code_not_docstrings():
    text = 'def f():\n    """Doc\n    on two lines."""\n    return 1\n\n\n'
    text += "class A:\n    def g(self):\n        x = 1\n        return x\n"
    assert function_lengths(text) == {"f": 2, "A.g": 3}


def test_no_function_over_80_lines_and_no_module_over_500():
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        where = path.relative_to(SRC.parent)
        if (n := len(text.splitlines())) > MAX_MODULE:
            too_long.append(f"{where}: {n} lines (module)")
        too_long += [
            f"{where}: {name} {n} lines"
            for name, n in function_lengths(text).items()
            if n > MAX_FUNCTION
        ]
    assert not too_long, "\n".join(too_long)
