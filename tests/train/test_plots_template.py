"""`dvc plots show` renders offline: the configured page template inlines Vega, Vega-Lite and vega-embed."""

import configparser
import re
from pathlib import Path

import pytest

from train import plots_template

REPO = Path(__file__).resolve().parents[2]


def test_the_configured_template_inlines_the_libraries_dvc_loads_from_a_cdn(tmp_path):
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    template = REPO / ".dvc" / config["plots"]["html_template"]
    page = template.read_text()
    for name, version in plots_template.dvc_versions().items():  # the installed DVC's versions
        assert f"/* {name}@{version} (npm) */" in page
    assert "{plot_divs}" in page and "{scripts}" not in page and "cdn.jsdelivr" not in page

    from dvc_render import render_html
    from dvc_render.vega import VegaRenderer

    datapoints = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]
    renderer = VegaRenderer(datapoints, "loss.tsv", x="step", y="loss")
    html = Path(render_html([renderer], tmp_path / "index.html", html_template=template)).read_text()
    assert "vegaEmbed('#loss_tsv'" in html and not re.search(r"<script[^>]+src=", html)


def test_the_builder_names_a_missing_package(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"npm pack vega@5\.20\.2"):
        plots_template.build(tmp_path, tmp_path / "page.html")
    assert not (tmp_path / "page.html").exists()
