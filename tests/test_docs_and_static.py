"""/api/docs/ works without internet (Swagger UI served from the project, in DEBUG and in
production) and the admin's "View site" leads somewhere real."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib import admin

ROOT = Path(__file__).resolve().parent.parent
CDN = re.compile(r"https?://(cdn\.jsdelivr\.net|unpkg\.com|cdnjs\.cloudflare\.com)")


def _asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', html)


def test_api_docs_page_loads_swagger_ui_from_the_project_not_a_cdn(client):
    response = client.get("/api/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    assert not CDN.search(html), "the docs page still loads assets from a CDN"
    assets = _asset_urls(html)
    assert any("swagger-ui-bundle" in url for url in assets), assets
    # Every asset the page names is served by the project itself.
    for url in assets:
        assert url.startswith("/static/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert b"".join(asset.streaming_content) if asset.streaming else asset.content


def test_swagger_ui_assets_are_served_in_production_after_collectstatic(tmp_path):
    """gunicorn serves no static files; WhiteNoise does, from STATIC_ROOT."""
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY"}}
    env.update(
        DEBUG="false",
        SECRET_KEY="x" * 30 + "-production-like-secret-" + "y" * 30,
        ALLOWED_HOSTS="meterops.example.com",
        STATIC_ROOT=str(tmp_path / "static"),
    )
    collected = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert collected.returncode == 0, collected.stderr
    probe = (
        "import re\n"
        "from django.test import Client\n"
        "c = Client(HTTP_HOST='meterops.example.com')\n"
        "page = c.get('/api/docs/', secure=True)\n"
        "html = page.content.decode()\n"
        'urls = re.findall(r\'(?:src|href)="([^"]+[.](?:js|css|png))"\', html)\n'
        "print('docs', page.status_code)\n"
        "for url in urls:\n"
        "    r = c.get(url, secure=True)\n"
        "    print('asset', r.status_code, url)\n"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "docs 200" in lines, result.stdout
    assets = [line for line in lines if line.startswith("asset ")]
    assert any("swagger-ui-bundle" in line for line in assets), result.stdout
    assert all(line.startswith("asset 200 /static/") for line in assets), result.stdout
    assert not CDN.search(result.stdout)


@pytest.mark.django_db
def test_admin_view_site_link_leads_to_the_api_docs(admin_client):
    page = admin_client.get("/admin/")
    assert admin.site.site_url == "/api/docs/"
    assert page.status_code == 200
    assert 'href="/api/docs/"' in page.content.decode()
    assert admin_client.get(admin.site.site_url).status_code == 200
