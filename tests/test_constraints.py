"""constraints.txt pins a version of every direct requirement, inside setup.py's ranges."""

import ast
import os

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_lists():
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("INSTALL_REQUIRES", "EXTRAS"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    return found["INSTALL_REQUIRES"], found["EXTRAS"]


def _pins():
    pins = {}
    for line in open(os.path.join(ROOT, "constraints.txt")):
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {line}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"pinned twice: {req.name}"
        pins[name] = specs[0].version
    return pins


def test_every_direct_requirement_is_pinned_within_its_range():
    install, extras = _setup_lists()
    pins = _pins()
    assert "girl-jax" not in pins
    for text in install + extras["test"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} is outside setup.py's {req.specifier}"
        )


def test_the_makefile_installs_with_the_constraints():
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    installs = [line for line in makefile.splitlines() if "pip install" in line and " -e " in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
