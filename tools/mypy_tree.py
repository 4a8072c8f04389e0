"""Lay out the installed packages as mypy must see them: a tree of links under build/mypy.

pyproject.toml maps ``kibitz`` to core/ and ``kibitz.plugins`` to plugins/ (setuptools'
package-dir), and the editable install finds them with an import hook, which mypy does
not run (python/mypy#13392). This script makes build/mypy/kibitz/... from that same
mapping, one link per module file, anew on each run: a module added, moved or removed is
seen at once. `make lint` runs it before mypy, whose mypy_path names the tree.
"""

import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "mypy"
MODULE_FILES = ("*.py", "*.pyi", "py.typed")


def source_dir(package: str, package_dir: dict[str, str]) -> Path:
    """The folder setuptools takes ``package`` from: its own entry, else its parent's plus its name."""
    if package in package_dir:
        return ROOT / package_dir[package]
    parent, _, name = package.rpartition(".")
    if not parent:
        return ROOT / package_dir.get("", ".") / name
    return source_dir(parent, package_dir) / name


def main() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools.get("package-dir", {})
    shutil.rmtree(TREE, ignore_errors=True)
    for package in setuptools["packages"]:
        target = TREE.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        source = source_dir(package, package_dir)
        for pattern in MODULE_FILES:
            for path in sorted(source.glob(pattern)):
                (target / path.name).symlink_to(path)


if __name__ == "__main__":
    main()
