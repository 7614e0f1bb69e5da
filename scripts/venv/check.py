"""Keeps the test venv honest (run with the venv's own python; stdlib only).

    check.py venv      exit 1 unless the running venv holds exactly the packages
                       of requirements.lock (nothing more, nothing less, same
                       versions) and the lock holds every pin of requirements.txt
                       and models.txt; prints the differences.
    check.py imports   exit 1 unless every module that the project's Python files
                       (tests/, fixtures/, scripts/) import is the standard
                       library's, the project's own, or installed by a locked
                       package; prints each offending file, line and module.

A package installed by hand therefore cannot make a test pass: setup-env.sh
rebuilds a venv that fails the first check, and the second catches a test that
imports something the lock does not provide.
"""

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# What `python -m venv` itself puts in every venv (ensurepip), not ours to pin.
VENV_SEED = {"pip", "setuptools"}
# Imports marked `# import-check: NAME` run in a peer's own venv and are
# checked against the pins of the script that builds it instead.
PEER_VENVS = {"tf-venv": "setup-tf-peer.sh", "prune-peer-venv": "setup-prune-peer.sh"}
PEER_MARK = re.compile(r"import-check: ([\w-]+)")


def norm(name):
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path):
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            sys.exit(f"{path}: '{line}' is not pinned as name==version")
        pins[norm(name)] = version.strip()
    return pins


def installed():
    found = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name and norm(name) not in VENV_SEED:
            found[norm(name)] = dist.version
    return found


def check_venv():
    lock = read_pins(HERE / "requirements.lock")
    problems = []
    for source in ("requirements.txt", "models.txt"):
        for name, version in read_pins(HERE / source).items():
            if lock.get(name) != version:
                problems.append(f"scripts/venv/{source} pins {name}=={version} but the lock has "
                                f"{lock.get(name, 'nothing')}: run scripts/venv/lock.sh")
    have = installed()
    for name in sorted(set(lock) | set(have)):
        want, got = lock.get(name), have.get(name)
        if want == got:
            continue
        if want is None:
            problems.append(f"{name}=={got} is installed but not in the lock")
        elif got is None:
            problems.append(f"{name}=={want} is locked but not installed")
        else:
            problems.append(f"{name} is {got}, the lock says {want}")
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return not problems


def peer_venv_pins(script):
    text = (REPO / "scripts" / script).read_text()
    return {norm(m.group(1)) for m in re.finditer(r"^\s+([A-Za-z0-9_.-]+)==\S+\s*$", text, re.M)}


def python_files():
    for top in ("tests", "fixtures", "scripts"):
        yield from sorted((REPO / top).rglob("*.py"))


def imported_modules(path):
    """(line number, top-level module, line text) of each absolute import."""
    source = path.read_text()
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            yield node.lineno, name.split(".")[0], lines[node.lineno - 1]


def check_imports():
    lock = set(read_pins(HERE / "requirements.lock"))
    module_dists = md.packages_distributions()
    peer_pins = {name: peer_venv_pins(script) for name, script in PEER_VENVS.items()}
    problems = []
    for path in python_files():
        local = {p.stem for p in path.parent.glob("*.py")}
        for lineno, module, text in imported_modules(path):
            if module in sys.stdlib_module_names or module in local:
                continue
            where = f"{path.relative_to(REPO)}:{lineno}"
            mark = PEER_MARK.search(text)
            if mark:
                venv = mark.group(1)
                if venv not in PEER_VENVS:
                    problems.append(f"{where}: unknown venv '{venv}' (known: {', '.join(PEER_VENVS)})")
                elif norm(module) not in peer_pins[venv]:
                    problems.append(f"{where}: '{module}' is marked as the {venv}'s but "
                                    f"scripts/{PEER_VENVS[venv]} does not pin it")
                continue
            dists = {norm(d) for d in module_dists.get(module, [])}
            if not dists:
                problems.append(f"{where}: '{module}' comes from no installed package: "
                                "pin its package in scripts/venv/requirements.txt")
            elif not dists & lock:
                problems.append(f"{where}: '{module}' comes from {sorted(dists)}, not in the lock")
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return not problems


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) == 2 else ""
    if what == "venv":
        sys.exit(0 if check_venv() else 1)
    if what == "imports":
        ok = check_imports()
        if not ok:
            print("check.py imports: the files above import modules that the test venv's lock "
                  "does not provide", file=sys.stderr)
        sys.exit(0 if ok else 1)
    sys.exit("usage: check.py venv|imports")
