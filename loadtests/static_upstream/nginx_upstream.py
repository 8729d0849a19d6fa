"""nginx as a static upstream: a fixed chat completion for POST /v1/chat/completions.

    python loadtests/static_upstream/nginx_upstream.py --port 18080 [--prefix DIR]

runs nginx in the foreground (``daemon off``) with a private prefix directory,
so it needs no root-owned paths and leaves nothing behind but the temp dir.
run.py imports ``nginx_argv`` and supervises the process itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "nginx.conf.template"
BODY = HERE / "chat_completion.json"


def find_nginx() -> str | None:
    # Debian installs to /usr/sbin, which is not on every user's PATH.
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def render_config(port: int, prefix: Path) -> str:
    body = BODY.read_text().strip()
    if "$" in body:
        raise ValueError("nginx would interpolate '$' in the static body")
    quoted = body.replace("\\", "\\\\").replace("'", "\\'")
    return (
        TEMPLATE.read_text()
        .replace("@PORT@", str(port))
        .replace("@PREFIX@", str(prefix))
        .replace("@BODY@", quoted)
    )


def nginx_argv(port: int, prefix: Path) -> list[str]:
    """Write the config under ``prefix`` and return the command that serves it."""
    nginx = find_nginx()
    if nginx is None:
        raise FileNotFoundError("nginx is not installed (apt-get install -y nginx)")
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render_config(port, prefix))
    # -e: startup errors go to stderr instead of /var/log/nginx (which may not be writable).
    return [nginx, "-p", str(prefix), "-c", str(conf), "-e", "stderr"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prefix", type=Path, default=None, help="temp dir (default: a new one)")
    args = parser.parse_args()
    prefix = args.prefix or Path(tempfile.mkdtemp(prefix="loadtest-nginx-"))
    argv = nginx_argv(args.port, prefix)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
