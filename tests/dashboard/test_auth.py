"""Dashboard login (``dashboard/auth.py``): password hashes and users file (pure), and a real ``bokeh serve``
started with ``dtmon up``'s dashboard command, asked over HTTP without and with a login."""

from __future__ import annotations

import http.cookiejar
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from dashboard.auth import _safe_next, check_login, hash_password, read_users, verify_password
from dtmon.services import free_port, stop_process, wait_for_port
from dtmon.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def test_password_hashes_verify_and_differ_by_salt():
    one, two = hash_password("hit me", iterations=1000), hash_password("hit me", iterations=1000)
    assert one != two and one.startswith("pbkdf2_sha256$1000$")
    assert verify_password("hit me", one) and verify_password("hit me", two)
    assert not verify_password("hit me!", one)
    assert not verify_password("hit me", "md5$x$y$z") and not verify_password("hit me", "garbage")


def test_users_file(tmp_path):
    path = tmp_path / "users"
    path.write_text(f"# shifters\nalice:{hash_password('a-pw', iterations=1000)}\n\nbob:{hash_password('b-pw', iterations=1000)}\n")
    users = read_users(path)
    assert sorted(users) == ["alice", "bob"]
    assert check_login("alice", "a-pw", users) and not check_login("alice", "b-pw", users)
    assert not check_login("carol", "a-pw", users)
    path.write_text("alice:a-pw-in-clear\n")
    with pytest.raises(ValueError, match="line 1"):
        read_users(path)


def test_login_redirects_only_to_this_server():
    assert _safe_next("/dashboard?x=1") == "/dashboard?x=1"
    assert _safe_next("//evil.example/x") == "/" and _safe_next("https://evil.example/") == "/"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _opener(jar: http.cookiejar.CookieJar) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_NoRedirect, urllib.request.HTTPCookieProcessor(jar))


def _request(opener, url: str, data: dict | None = None) -> tuple[int, dict, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with opener.open(url, data=body, timeout=60) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


@pytest.mark.integration
def test_bokeh_serve_with_the_login_module(tmp_path):
    """Unauthenticated page -> 302 to /login; wrong password -> 401; right one -> cookie -> the dashboard page."""
    from dtmon.cli import dashboard_command

    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('shifter-pw', iterations=10_000)}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DTMON_", "BOKEH_"))}
    env |= {"DTMON_DASHBOARD_USERS_FILE": str(users), "BOKEH_COOKIE_SECRET": "test-cookie-secret-0123456789abcdef",
            "DTMON_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "DTMON_DASHBOARD_ALLOW_ORIGINS": "monitor.example:8080"}
    cmd = dashboard_command(load_settings(dashboard_users_file=str(users)), port)
    assert cmd[cmd.index("--auth-module") + 1].endswith("dashboard/auth.py")
    log = tmp_path / "bokeh.log"
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_port("127.0.0.1", port, 60, server)
        jar = http.cookiejar.CookieJar()
        opener = _opener(jar)

        status, headers, _ = _request(opener, f"{base}/dashboard")
        assert status == 302 and headers["Location"].startswith("/login?next=%2Fdashboard"), (status, headers)
        status, _, page = _request(opener, f"{base}/login?next=%2Fdashboard")
        assert status == 200 and 'type="password"' in page

        status, _, page = _request(opener, f"{base}/login", {"username": "alice", "password": "wrong", "next": "/dashboard"})
        assert status == 401 and "Wrong user or password" in page and not list(jar)

        status, headers, _ = _request(opener, f"{base}/login", {"username": "alice", "password": "shifter-pw", "next": "/dashboard"})
        assert status == 302 and headers["Location"] == "/dashboard"
        assert [c.name for c in jar] == ["dtmon_user"]
        t0 = time.monotonic()
        status, _, page = _request(opener, f"{base}/dashboard")
        print(f"dashboard page after login: HTTP {status}, {len(page)} bytes, {time.monotonic() - t0:.1f} s")
        assert status == 200 and "Bokeh" in page

        # a forged cookie (not signed with the server's secret) is no login
        forged = _opener(http.cookiejar.CookieJar())
        forged.addheaders = [("Cookie", "dtmon_user=alice")]
        assert _request(forged, f"{base}/dashboard")[0] == 302
        # logout clears the cookie
        status, headers, _ = _request(opener, f"{base}/logout")
        assert status == 302 and _request(opener, f"{base}/dashboard")[0] == 302
    finally:
        stop_process(server)
    text = log.read_text(errors="replace")
    assert "dashboard login refused: user 'alice' from 127.0.0.1" in text
    assert "shifter-pw" not in text and "wrong" not in text  # no password is logged
