"""Build `.dvc/offline_plots.html`: DVC's plots page with Vega, Vega-Lite and vega-embed inlined.

`dvc plots show` / `dvc plots diff` write a page whose charts load these three libraries from a CDN,
so on an offline machine (a cluster node) the page is blank. DVC takes its own page template from
the `plots.html_template` config (set in `.dvc/config`); this one carries the libraries itself and
has no `{scripts}` placeholder, so the CDN tags are never added. The versions are those of the
installed DVC renderer (`dvc_render.vega.VegaRenderer.SCRIPTS`), from the npm packages:

    npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2      # in a scratch folder
    python -m train.plots_template --packages <that folder>
"""

from __future__ import annotations

import argparse
import re
import sys
import tarfile
from pathlib import Path

from pipeline.io import atomic_write

OUT = Path(".dvc/offline_plots.html")
LIBRARIES = {"vega": "build/vega.min.js", "vega-lite": "build/vega-lite.min.js",
             "vega-embed": "build/vega-embed.min.js"}  # fmt: skip
PLACEHOLDERS = ("{refresh_tag}", "{plot_divs}", "{scripts}")  # what DVC's renderer replaces (dvc_render.html)
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot (offline: Vega libraries inlined)</title>
%s
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def dvc_versions() -> dict[str, str]:
    """{package: version} that the installed DVC's Vega renderer loads from its CDN."""
    from dvc_render.vega import VegaRenderer

    found = dict(re.findall(r"npm/(vega(?:-lite|-embed)?)@([\d.]+)", VegaRenderer.SCRIPTS))
    missing = set(LIBRARIES) - set(found)
    if missing:
        raise ValueError(f"dvc_render's Vega scripts no longer name {sorted(missing)}: update this builder")
    return found


def script(packages: Path, name: str, version: str) -> str:
    """The minified library of `<packages>/<name>-<version>.tgz` (what `npm pack` writes) as a <script>."""
    tgz = packages / f"{name}-{version}.tgz"
    if not tgz.is_file():
        raise FileNotFoundError(f"{tgz} is missing: run `npm pack {name}@{version}` in {packages}")
    with tarfile.open(tgz) as tar:
        member = tar.extractfile(f"package/{LIBRARIES[name]}")
        if member is None:
            raise ValueError(f"{tgz}: no package/{LIBRARIES[name]}")
        code = member.read().decode("utf-8")
    for placeholder in PLACEHOLDERS:
        if placeholder in code:  # DVC would replace it inside the library
            raise ValueError(f"{tgz}: {LIBRARIES[name]} contains {placeholder}")
    code = code.replace("</script", "<\\/script")  # an inline script ends at the first </script
    return f'    <script type="text/javascript">/* {name}@{version} (npm) */\n{code}\n    </script>'


def build(packages: Path, out: Path = OUT) -> Path:
    """Write the template (atomically) from the npm tarballs in `packages`."""
    versions = dvc_versions()
    page = PAGE % "\n".join(script(packages, name, versions[name]) for name in LIBRARIES)
    with atomic_write(out, "w") as handle:
        handle.write(page)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=Path, required=True, help="folder with the `npm pack` tarballs")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    try:
        path = build(args.packages, args.out)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB); `dvc config plots.html_template` names it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
