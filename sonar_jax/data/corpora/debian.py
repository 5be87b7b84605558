"""Debian packages as data: `apt-get download` + `dpkg-deb -x` into a cache folder.

The corpora ship inside Debian packages (translation catalogs, langpacks, game data). Nothing is
installed: each .deb is fetched into `cache_dir` and unpacked into `cache_dir/<package>/`, so a
second build reads the cache and needs no network.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from dataclasses import dataclass

_DONE = ".unpacked"  # written last, so an interrupted unpack is redone


@dataclass(frozen=True)
class Package:
    """An unpacked package: `root` is the file-system root it was unpacked into."""

    name: str
    version: str
    root: pathlib.Path

    @property
    def copyright(self) -> pathlib.Path | None:
        """The package's Debian copyright file (its licence notice), if it ships one."""
        path = self.root / "usr" / "share" / "doc" / self.name / "copyright"
        return path if path.is_file() else None


def _run(command: list[str], cwd: pathlib.Path) -> None:
    if shutil.which(command[0]) is None:
        raise RuntimeError(f"`{command[0]}` is not available: building this corpus needs a Debian "
                           "or Ubuntu system (apt-get and dpkg-deb)")
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        hint = ("; run `apt-get update` first (the package lists may be missing or stale)"
                if command[0] == "apt-get" else "")
        raise RuntimeError(f"`{' '.join(command)}` failed: {result.stderr.strip()}{hint}")


def _deb_of(name: str, folder: pathlib.Path) -> pathlib.Path | None:
    debs = sorted(folder.glob(f"{name}_*.deb"))
    if len(debs) > 1:
        raise RuntimeError(f"{folder} holds several versions of {name}: "
                           f"{', '.join(d.name for d in debs)}; delete all but one")
    return debs[0] if debs else None


def fetch(names: list[str], cache_dir: str | pathlib.Path) -> dict[str, Package]:
    """Download (when not cached) and unpack each named package; returns them by name.

    A cached .deb is reused as it is: delete `cache_dir` to follow archive updates."""
    cache = pathlib.Path(cache_dir)
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [name for name in names if _deb_of(name, debs) is None]
    if missing:
        _run(["apt-get", "download", "-q", *missing], cwd=debs)
    packages = {}
    for name in names:
        deb = _deb_of(name, debs)
        if deb is None:
            raise RuntimeError(f"apt-get download gave no .deb for {name}")
        root = cache / name
        done = root / _DONE
        if not done.is_file() or done.read_text() != deb.name:
            shutil.rmtree(root, ignore_errors=True)
            _run(["dpkg-deb", "-x", str(deb), str(root)], cwd=cache)
            done.write_text(deb.name)
        version = deb.name[len(name) + 1:].rsplit("_", 1)[0].replace("%3a", ":")
        packages[name] = Package(name, version, root)
    return packages
