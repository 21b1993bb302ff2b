"""A real headless Chromium for the tests, and gunicorn serving tests/browser_app.py to it.

`chromium()` starts one through Selenium and chromedriver. When Selenium, the
browser or its driver is missing the test skips with the reason; with
FASTSESS_REQUIRE_SERVERS=1 (set by .ci/run, which installs them) it fails.

The browser resolves every *.example.test name to 127.0.0.1, so a test can
serve a "public" host (not loopback, so no secure context over plain HTTP)
and sibling subdomains for Domain cookies from one local server. A Site
started with tls=True serves HTTPS with a self-signed certificate for
*.example.test, which the browser accepts.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastsess
from loopback import die_with_parent, free_port

TESTS_DIR = Path(__file__).resolve().parent
#: where this process imported fastsess from: gunicorn workers import the same code
FASTSESS_PATH = Path(fastsess.__file__).resolve().parent.parent
PUBLIC_HOST = "www.example.test"


def _missing(reason: str) -> None:
    if os.environ.get("FASTSESS_REQUIRE_SERVERS", "") not in ("", "0"):
        pytest.fail(reason + "; FASTSESS_REQUIRE_SERVERS=1 requires it", pytrace=False)
    pytest.skip(reason)


def _binary(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium():
    """A headless Chromium driven by Selenium; the caller quits it."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    browser = _binary("chromium", "chromium-browser", "google-chrome")
    driver = _binary("chromedriver")
    if browser is None or driver is None:
        _missing("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = Options()
    options.binary_location = browser
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP *.example.test 127.0.0.1",
        "--ignore-certificate-errors",  # the TLS sites' certificates are self-signed
    ):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(driver))


def page_json(driver) -> dict:
    """The JSON a browser_app route answered, as the browser shows it."""
    return json.loads(driver.find_element("tag name", "body").text)


def clear_cookies(driver) -> None:
    """Every cookie of every site (Selenium's delete_all_cookies only clears the current one)."""
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})


def browser_cookies(driver) -> list[dict]:
    """Every cookie the browser holds, whatever the current page."""
    return driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]


def require_gunicorn() -> None:
    try:
        import gunicorn  # noqa: F401 - only probing that the workers can run
    except ImportError:
        _missing("gunicorn is not installed (pip install 'fastsess[test]')")


class Site:
    """gunicorn (gthread workers) serving browser_app with the given middleware options; stopped by pid.

    Threaded workers, because a browser keeps idle connections open and would
    hold a sync worker until its timeout.
    """

    def __init__(self, options: dict, directory: Path, workers: int = 1, tls: bool = False) -> None:
        require_gunicorn()
        self.options = options
        self.tls = tls
        self.workers = workers
        self.directory = directory
        self.port = free_port()
        self.log_path = directory / "gunicorn.log"
        self.process: subprocess.Popen | None = None

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def start(self) -> Site:
        env = {
            **os.environ,
            "FASTSESS_BROWSER_OPTIONS": json.dumps(self.options),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(FASTSESS_PATH), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        argv = [
            sys.executable, "-m", "gunicorn", "-w", str(self.workers), "-k", "gthread", "--threads", "4",
            "-b", f"127.0.0.1:{self.port}", "--graceful-timeout", "1", "--log-level", "warning",
            "--error-logfile", "-", "browser_app:app",
        ]
        if self.tls:
            argv[-1:-1] = ["--certfile", str(self.directory / "cert.pem"), "--keyfile", str(self.directory / "key.pem")]
            self_signed_certificate(self.directory)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, env=env, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if request(self.port, "/stats", tls=self.tls)[0] == 200:
                    return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gunicorn did not start:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            # QUIT is gunicorn's quick shutdown. A worker thread may still wait on a
            # connection the browser opened ahead of need; --graceful-timeout bounds that.
            os.kill(process.pid, signal.SIGQUIT)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def events(self) -> dict:
        """fastsess event counts of the worker that answers (tests that read them run one worker)."""
        status, _, body = request(self.port, "/stats", tls=self.tls)
        assert status == 200, body
        return json.loads(body)["events"]


def request(port: int, path: str, headers: list[tuple[str, str]] = (), host: str = "127.0.0.1", tls: bool = False):
    """One raw HTTP/1.1 request: (status, headers as a list of pairs, body). Header values go out as latin-1."""
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # self-signed, ours
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", f"{host}:{port}")
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def self_signed_certificate(directory: Path) -> None:
    """cert.pem and key.pem in directory: a certificate for *.example.test, valid for two days."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PUBLIC_HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("*.example.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
