"""The notifier: receives the pipeline's signed daily callback and shows recent results.

A small Flask app, deliberately independent of Airflow (it never imports it) so
it can run anywhere the callback can reach.  Built the Flask-tutorial way: an
app factory, one blueprint per concern, SQLite for state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from superres.config import Secret

from . import api, config, db, filters, gallery, media

# Same-origin everything: no CDNs (the machine is offline) and no inline scripts or styles.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app; ``test_config`` replaces the environment entirely (as in flaskr)."""
    app = Flask(__name__)
    app.config.from_mapping(config.DEFAULTS)
    app.config.update(config.from_env() if test_config is None else test_config)
    if not isinstance(app.config["CALLBACK_SECRET"], Secret):
        app.config["CALLBACK_SECRET"] = Secret(app.config["CALLBACK_SECRET"] or "")
    # Escape everything, whatever the template's extension; user data is never marked safe.
    app.jinja_env.autoescape = True

    if not app.config["CALLBACK_SECRET"]:
        app.logger.warning("no callback secret configured: POST /api/callbacks will answer 503")

    db.init_app(app)
    filters.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(gallery.bp)
    app.register_blueprint(media.bp)
    app.register_error_handler(HTTPException, _http_error)
    app.after_request(_security_headers)
    return app


def _http_error(exc: HTTPException) -> tuple[Response | str, int]:
    """JSON for API clients, a page for people; never the exception's internals."""
    code = exc.code or 500
    if request.path.startswith("/api/") or request.path == "/healthz":
        return jsonify(error=(exc.name or "error").lower().replace(" ", "_"), message=exc.description), code
    return render_template("error.html", code=code, name=exc.name, description=exc.description), code


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response
