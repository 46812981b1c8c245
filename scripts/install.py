"""``pip install`` for the Makefile, done by uv when it can, with pip's own settings; plain pip otherwise.

Usage (with the virtualenv's python): ``python scripts/install.py <pip install arguments>``

uv resolves and unpacks in parallel. Measured on the 2-core dev machine, in a fresh venv with torch
installed and empty caches: ``-e .[dev]`` 9-32 s with uv (resolve 4 s, fetch and unpack 5 s in the last
clean-clone run) against 156 s with pip, the same package versions. (The Makefile
installs torch itself with pip: the local wheels it must take are found by pip's settings alone.) uv does not read pip's configuration, so the indexes, find-links folders, constraint
files and certificate that pip is configured with (``pip config list``: files and ``PIP_*`` variables)
are passed to it, and ``--index-strategy unsafe-best-match`` makes it pick versions across indexes as pip
does. Anything that goes wrong on the uv path (uv not installable, a resolution error) falls back to
``pip install`` with the same arguments. ``SPIKELIGHT_INSTALLER=pip`` skips uv.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys


def pip_settings(python: str) -> dict[str, str]:
    """``key -> value`` of pip's effective configuration (environment variables win over files)."""
    try:
        out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    files: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in out.splitlines():
        scope_key, sep, value = line.partition("=")
        if not sep:
            continue
        scope, _, key = scope_key.rpartition(".")
        value = value.strip().strip("'\"")
        (env if scope.startswith(":env:") else files)[key] = value
    return {**files, **env}


def uv_command(python: str, settings: dict[str, str], args: list[str]) -> list[str]:
    cmd = [python, "-m", "uv", "pip", "install", "--python", python, "--index-strategy", "unsafe-best-match"]
    # uv takes a version's files from the first index that lists the version, pip from all of them: pip's
    # main index comes first so that a partial local mirror (e.g. only soundfile's pure-Python wheel, which
    # lacks the bundled libsndfile of PyPI's manylinux wheel) does not hide the platform wheels
    main = settings.get("index-url") or "https://pypi.org/simple"
    for url in [main, *shlex.split(settings.get("extra-index-url", ""))]:
        cmd += ["--extra-index-url", url]
    for link in shlex.split(settings.get("find-links", "")):
        cmd += ["--find-links", link]
    for constraint in shlex.split(settings.get("constraint", "")):
        cmd += ["--constraint", constraint]
    return cmd + args


def main(args: list[str]) -> int:
    python = sys.executable
    pip = [python, "-m", "pip", "install", *args]
    if os.environ.get("SPIKELIGHT_INSTALLER", "uv") != "pip":
        env = dict(os.environ)
        settings = pip_settings(python)
        if settings.get("cert") and "SSL_CERT_FILE" not in env:
            env["SSL_CERT_FILE"] = settings["cert"]
        have_uv = subprocess.run([python, "-m", "uv", "--version"], capture_output=True).returncode == 0
        if not have_uv:
            have_uv = subprocess.run([python, "-m", "pip", "install", "-q", "uv"]).returncode == 0
        if have_uv:
            cmd = uv_command(python, settings, args)
            print("install.py:", " ".join(shlex.quote(c) for c in cmd[1:]), flush=True)
            if subprocess.run(cmd, env=env).returncode == 0:
                return 0
            print("install.py: uv failed; installing with pip instead", file=sys.stderr, flush=True)
        else:
            print("install.py: uv is not installable here; installing with pip", file=sys.stderr, flush=True)
    print("install.py:", " ".join(shlex.quote(c) for c in pip[1:]), flush=True)
    return subprocess.run(pip).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
