"""Airflow UI plugin: links from the Airflow UI to the notifier's gallery.

Adds a "Super-resolution gallery" entry to the navigation bar and a "Gallery"
tab on every DAG run that opens that run's page in the notifier.  The URL is
the configured ``SUPERRES_NOTIFIER_URL`` (superres.config), nothing hard-coded.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from superres.config import Settings


def gallery_views(base_url: str) -> list[dict]:
    base = base_url.rstrip("/")
    return [
        {"name": "Super-resolution gallery", "href": f"{base}/", "destination": "nav",
         "category": "browse", "url_route": None},
        {"name": "Gallery", "href": f"{base}/runs/{{RUN_ID}}", "destination": "dag_run",
         "url_route": None},
    ]


class SuperresGalleryPlugin(AirflowPlugin):
    name = "superres_gallery"
    external_views = gallery_views(Settings.from_env().notifier_url)
