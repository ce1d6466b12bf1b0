"""Login in front of the dashboard, with Bokeh's auth hooks: ``bokeh serve --auth-module dashboard/auth.py``.

Bokeh calls ``get_user`` for every page and websocket request; ``None`` sends the browser
to ``login_url`` (``/login?next=<page>``), served by ``LoginHandler``: a form whose POST
checks the user's password against the users file and sets a signed cookie (Tornado secure
cookie, ``httponly``, ``SameSite=Strict``, valid ``SESSION_DAYS``), then redirects to the
page. ``/logout`` clears it. Signing needs Bokeh's cookie secret (``--cookie-secret`` or
``BOKEH_COOKIE_SECRET``; ``dtmon up`` makes a random one per start).

Users file (``DTMON_DASHBOARD_USERS_FILE``): one ``user:hash`` line per user, ``#`` comments;
hashes are PBKDF2-HMAC-SHA256 (``hashlib.pbkdf2_hmac``, RFC 8018 section 5.2) written as
``pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>`` (Django's layout). Make one with
``python -m dashboard.auth hash`` (asks for the password). A refused login is logged with
the user name and address, never the password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import os
import secrets
from pathlib import Path

from tornado.web import RequestHandler

log = logging.getLogger("dtmon.dashboard.auth")

COOKIE = "dtmon_user"
SESSION_DAYS = 1
ITERATIONS = 600_000
"""PBKDF2 iterations for new hashes (OWASP's 2023 figure for PBKDF2-HMAC-SHA256)."""

login_url = "/login"
logout_url = "/logout"


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """``pbkdf2_sha256$<iterations>$<salt>$<hash>`` of ``password`` (16 random salt bytes unless given)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (from ``hash_password``); False for an unknown layout."""
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def read_users(path: str | Path) -> dict[str, str]:
    """User -> password hash from a users file (``user:hash`` lines; blank and ``#`` lines skipped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line without ``user:hash`` (its number is named).
    """
    users = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if not sep or not user or not encoded.startswith("pbkdf2_sha256$"):
            raise ValueError(f"{path} line {number}: expected user:pbkdf2_sha256$..., see python -m dashboard.auth hash")
        users[user] = encoded
    return users


def _users() -> dict[str, str]:
    from dtmon.settings import load_settings

    path = load_settings().dashboard_users_file
    if not path:
        raise RuntimeError("the dashboard login needs a users file: set DTMON_DASHBOARD_USERS_FILE")
    return read_users(path)


USERS: dict[str, str] = _users() if os.environ.get("DTMON_DASHBOARD_USERS_FILE") else {}
"""The users file, read once when Bokeh loads this module."""


def check_login(username: str, password: str, users: dict[str, str] | None = None) -> bool:
    """Whether ``username`` is in ``users`` (default: the users file) with ``password``."""
    encoded = (USERS if users is None else users).get(username)
    return encoded is not None and verify_password(password, encoded)


def get_user(request_handler: RequestHandler) -> str | None:
    """The logged-in user of a request (from the signed cookie), or None."""
    user = request_handler.get_secure_cookie(COOKIE, max_age_days=SESSION_DAYS)
    return user.decode() if user else None


FORM = """<!doctype html><html><head><title>dtmon dashboard login</title></head>
<body style="font-family: sans-serif; margin: 4em auto; max-width: 20em">
<h2>MiniDT dashboard</h2>{error}
<form method="post" action="{action}">
<input type="hidden" name="next" value="{next}">
<p><label>User <input name="username" autofocus></label></p>
<p><label>Password <input name="password" type="password"></label></p>
<p><button type="submit">Log in</button></p>
</form></body></html>"""


def _safe_next(value: str) -> str:
    """Only a path on this server (no scheme, no //host): an open redirect is refused."""
    return value if value.startswith("/") and not value.startswith("//") else "/"


class LoginHandler(RequestHandler):
    """``GET /login``: the form; ``POST /login``: check the password, set the cookie, go to ``next`` (401 if refused)."""

    def _form(self, error: str = "") -> None:
        nxt = html.escape(_safe_next(self.get_argument("next", "/")))
        self.write(FORM.format(error=f'<p style="color: #b00">{html.escape(error)}</p>' if error else "", action=login_url, next=nxt))

    def get(self) -> None:
        self._form()

    def post(self) -> None:
        username = self.get_argument("username", "")
        if check_login(username, self.get_argument("password", "")):
            self.set_secure_cookie(COOKIE, username, expires_days=SESSION_DAYS, httponly=True, samesite="Strict")
            log.info("dashboard login: %s from %s", username, self.request.remote_ip)
            self.redirect(_safe_next(self.get_argument("next", "/")))
            return
        log.warning("dashboard login refused: user %r from %s", username, self.request.remote_ip)
        self.set_status(401)
        self._form("Wrong user or password.")


class LogoutHandler(RequestHandler):
    """``GET /logout``: clear the cookie, back to the login form."""

    def get(self) -> None:
        self.clear_cookie(COOKIE)
        self.redirect(login_url)


def main(argv: list[str] | None = None) -> int:
    """``python -m dashboard.auth hash [USER]``: print a users-file line (the password is asked twice)."""
    import argparse
    import getpass

    parser = argparse.ArgumentParser(prog="python -m dashboard.auth", description="make a dashboard users-file line")
    parser.add_argument("command", choices=["hash"])
    parser.add_argument("user", nargs="?", default=getpass.getuser())
    args = parser.parse_args(argv)
    password = getpass.getpass(f"password for {args.user}: ")
    if password != getpass.getpass("again: "):
        print("the two passwords differ")
        return 1
    print(f"{args.user}:{hash_password(password)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
