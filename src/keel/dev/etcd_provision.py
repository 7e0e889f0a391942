"""Finds or installs an etcd >= 3.5 for tests and local clusters.

Order: `$KEEL_ETCD`, then `etcd` on PATH, then the project cache (`.cache/etcd`), and last the
newest `etcd-server` of Debian's trixie or sid suite, fetched through the machine's own
configured Debian mirror with a private sources list and apt state dir (no host is named here),
unpacked into the cache and checked by running it. `python -m keel.dev.etcd_provision`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

MIN_VERSION = (3, 5, 0)
SUITES = ("trixie", "sid")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class ProvisionError(RuntimeError):
    pass


def project_root() -> Path:
    """The checkout this package lives in (src layout), else the working directory."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "keel").is_dir():
            return parent
    return Path.cwd()


def cache_dir() -> Path:
    return Path(os.environ.get("KEEL_CACHE_DIR", project_root() / ".cache")) / "etcd"


def etcd_version(binary: str) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"etcd Version:\s*(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return (major, minor, patch)


def _usable(binary: str | None) -> bool:
    if not binary or not os.access(binary, os.X_OK):
        return False
    version = etcd_version(binary)
    return version is not None and version >= MIN_VERSION


def cached_binary() -> Path:
    return cache_dir() / "root" / "usr" / "bin" / "etcd"


def find_etcd() -> str | None:
    """The first usable etcd >= 3.5, without installing anything."""
    for candidate in (os.environ.get("KEEL_ETCD"), shutil.which("etcd"), str(cached_binary())):
        if _usable(candidate):
            assert candidate is not None
            return candidate
    return None


def debian_mirrors() -> list[str]:
    """Debian archive URIs from the machine's apt configuration (deb822 and one-line)."""
    uris: list[str] = []
    paths = [Path("/etc/apt/sources.list")]
    sources_d = Path("/etc/apt/sources.list.d")
    if sources_d.is_dir():
        paths += sorted(sources_d.glob("*.list")) + sorted(sources_d.glob("*.sources"))
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue
        for raw_line in text.splitlines():
            line = raw_line.strip()
            if line.startswith("URIs:"):
                uris += line.split()[1:]
            elif line.startswith("deb "):
                parts = [p for p in re.sub(r"\[[^]]*\]", "", line).split() if p]
                if len(parts) >= 2:
                    uris.append(parts[1])
    # the main archive, not the security or updates archives
    main = [u for u in uris if "security" not in u and "/debian" in u]
    return list(dict.fromkeys(main))


def _apt_options(root: Path) -> list[str]:
    return [
        f"-o=Dir::Etc::sourcelist={root / 'sources.list'}",
        f"-o=Dir::Etc::sourceparts={root / 'sources.list.d'}",
        f"-o=Dir::Etc::preferencesparts={root / 'preferences.d'}",
        f"-o=Dir::State={root / 'state'}",
        f"-o=Dir::Cache={root / 'cache'}",
        "-o=Debug::NoLocking=1",
        "-o=APT::Sandbox::User=root",
    ]


def _run(cmd: list[str], **kwargs: object) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise ProvisionError(
            f"{' '.join(cmd[:2])} failed ({proc.returncode}): {proc.stderr[-800:]}"
        )
    out: str = proc.stdout
    return out


def install_from_debian() -> str:
    """Download and unpack the newest etcd-server of trixie/sid; return the binary path."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise ProvisionError(
            "etcd >= 3.5 is not installed and apt is not available here. Install etcd 3.5 or "
            "newer (https://etcd.io/docs/latest/install/: a release tarball, or your "
            "distribution's etcd-server package) and put `etcd` on PATH, or set KEEL_ETCD."
        )
    mirrors = debian_mirrors()
    if not mirrors:
        raise ProvisionError(
            "no Debian mirror found in /etc/apt/sources.list{,.d}; install etcd >= 3.5 "
            "yourself and put it on PATH or set KEEL_ETCD"
        )
    apt_root = cache_dir() / "apt"
    for sub in ("sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial"):
        (apt_root / sub).mkdir(parents=True, exist_ok=True)
    signed = f"[signed-by={KEYRING}] " if Path(KEYRING).exists() else ""
    (apt_root / "sources.list").write_text(
        "".join(f"deb {signed}{mirror} {suite} main\n" for mirror in mirrors for suite in SUITES)
    )
    options = _apt_options(apt_root)
    print("keel: fetching the etcd-server package index (trixie, sid)...", file=sys.stderr)
    _run(["apt-get", *options, "update"])
    policy = _run(["apt-cache", *options, "policy", "etcd-server"])
    match = re.search(r"Candidate:\s*(\S+)", policy)
    if not match or match.group(1) == "(none)":
        raise ProvisionError(f"no etcd-server candidate in trixie/sid:\n{policy}")
    version = match.group(1)
    download = cache_dir() / "download"
    shutil.rmtree(download, ignore_errors=True)
    download.mkdir(parents=True)
    print(f"keel: downloading etcd-server {version}...", file=sys.stderr)
    _run(
        ["apt-get", *options, "download", f"etcd-server={version}", f"etcd-client={version}"],
        cwd=download,
    )
    root = cache_dir() / "root"
    shutil.rmtree(root, ignore_errors=True)
    for deb in sorted(download.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root)])
    binary = cached_binary()
    if not _usable(str(binary)):
        raise ProvisionError(f"unpacked {binary} does not run as etcd >= 3.5")
    shutil.rmtree(download, ignore_errors=True)
    return str(binary)


def ensure_etcd() -> str:
    """A usable etcd binary, installing one into the project cache if needed."""
    found = find_etcd()
    if found:
        return found
    return install_from_debian()


def main() -> int:
    try:
        binary = ensure_etcd()
    except ProvisionError as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return 1
    version = etcd_version(binary)
    assert version is not None
    print(f"etcd {'.'.join(map(str, version))} at {binary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
