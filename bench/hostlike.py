"""For the rehearsal (`bench/device.sh --tiny`): a Python like the GPU host's, built from this machine's
.venv: a bare venv (no site-packages of its own) and a folder of links to the .venv's installed
distributions that bench/gpu-host-packages.txt lists (what the GPU host's image holds). Whatever else
diffbus imports must then come from .whl/, as on the GPU host.

    .venv/bin/python bench/hostlike.py DIR      # prints DIR/venv/bin/python and DIR/site
"""

import importlib.metadata
import re
import sys
import venv
from pathlib import Path

LISTED = Path(__file__).with_name("gpu-host-packages.txt")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def with_dependencies(names: set[str]) -> set[str]:
    """The listed distributions and what they need, as installed here (the host's own are consistent)."""
    from packaging.requirements import Requirement

    wanted, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue  # listed, not installed here (jax, say): nothing of diffbus needs it
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(norm(req.name))
    return wanted


def link_distributions(site: Path, names: set[str]) -> list[str]:
    """Link each named distribution's top-level files and folders into `site`; the names linked."""
    site.mkdir(parents=True, exist_ok=True)
    linked = []
    for dist in importlib.metadata.distributions():
        if norm(dist.metadata["Name"]) not in names or not dist.files:
            continue
        root = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files if f.parts[0] != ".."}:
            if (root / top).exists() and not (site / top).exists():
                (site / top).symlink_to(root / top)
        linked.append(dist.metadata["Name"])
    return sorted(linked)


def main() -> None:
    out = Path(sys.argv[1])
    venv.create(out / "venv", with_pip=False, system_site_packages=False, symlinks=True)
    names = {norm(line) for line in LISTED.read_text().split() if line and not line.startswith("#")}
    linked = link_distributions(out / "site", with_dependencies(names))
    print(f"{len(linked)} host packages linked", file=sys.stderr)
    print(out / "venv" / "bin" / "python")
    print(out / "site")


if __name__ == "__main__":
    main()
