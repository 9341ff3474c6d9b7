#!/usr/bin/env python3
"""The web console in a real browser: Debian's chromium driven over WebDriver (chromedriver),
from the Python standard library only (urllib, json, subprocess).

Run by the root-only Rust test `pxe-server/server/tests/console.rs`, which starts a real
`tugboot serve` in a network namespace, netboots a machine against it (udhcpc, then curl of
its iPXE script), labels it with a `<script>` value and publishes an image; then runs this
script inside the same namespace:

    python3 tests/console/browser.py --url https://10.77.0.1:8443 --cert data/api/server.pem \
        --token-file data/api/operator-token --mac 02:00:00:77:00:01 --out docs/console

TLS is verified for the one server key: chromium trusts exactly the server certificate's
public key (--ignore-certificate-errors-spki-list with its SHA-256), nothing else.
Screenshots (whole page) at 1280 px and 390 px widths go to --out. Exits non-zero with a
message on the first check that fails.
"""

import argparse
import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
INJECTED = "<script>alert(1)</script>"


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)
    print(f"  ok: {what}", flush=True)


def spki_sha256(cert_pem_path):
    """base64(SHA-256(SubjectPublicKeyInfo)) of the certificate, as chromium wants it."""
    pub = subprocess.run(
        ["openssl", "x509", "-in", cert_pem_path, "-noout", "-pubkey"],
        check=True, capture_output=True).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"],
        input=pub, check=True, capture_output=True).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Driver:
    """A minimal W3C WebDriver client."""

    def __init__(self, port, spki, profile):
        self.base = f"http://127.0.0.1:{port}"
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": "/usr/bin/chromium",
                        "args": [
                            "--headless=new",
                            "--no-sandbox",  # root in CI
                            "--disable-dev-shm-usage",
                            "--disable-gpu",
                            "--no-first-run",
                            "--hide-scrollbars",
                            f"--user-data-dir={profile}",
                            f"--ignore-certificate-errors-spki-list={spki}",
                            "--window-size=1280,900",
                        ],
                    },
                }
            }
        }
        self.sid = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method,
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            raise Failed(f"WebDriver {method} {path}: {e.code} {e.read()[:400]!r}") from e

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.sid}{path}", body)

    def go(self, url):
        self.s("POST", "/url", {"url": url})

    def url(self):
        return self.s("GET", "/url")

    def find(self, css):
        v = self.s("POST", "/element", {"using": "css selector", "value": css})
        if not isinstance(v, dict) or ELEMENT not in v:
            raise Failed(f"no element {css!r}: {v!r}")
        return v[ELEMENT]

    def all(self, css):
        return [e[ELEMENT] for e in self.s("POST", "/elements", {"using": "css selector", "value": css})]

    def text(self, css):
        return self.s("GET", f"/element/{self.find(css)}/text")

    def click(self, css):
        self.s("POST", f"/element/{self.find(css)}/click", {})

    def type(self, css, text):
        e = self.find(css)
        self.s("POST", f"/element/{e}/clear", {})
        self.s("POST", f"/element/{e}/value", {"text": text})

    def js(self, script, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def js_async(self, script, *args):
        return self.s("POST", "/execute/async", {"script": script, "args": list(args)})

    def cdp(self, cmd, params=None):
        return self.s("POST", "/goog/cdp/execute", {"cmd": cmd, "params": params or {}})

    def wait(self, what, fn, timeout=20):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = fn()
                if last:
                    return last
            except Failed as e:
                last = e
            time.sleep(0.25)
        raise Failed(f"timed out waiting for {what} (last: {last!r})")

    def screenshot(self, path, width):
        """The whole page at `width` CSS pixels (mobile emulation below 600)."""
        height = 900 if width >= 600 else 844
        self.cdp("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
        time.sleep(0.2)
        size = self.cdp("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.cdp("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width,
                     "height": min(max(size["height"], height), 6000), "scale": 1}})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        self.cdp("Emulation.clearDeviceMetricsOverride")
        # A page narrower than its content would scroll sideways: unusable on a phone.
        return size["width"]

    def quit(self):
        try:
            self.s("DELETE", "")
        except Exception:  # noqa: BLE001 - best effort at the end
            pass


def shots(d, out, name):
    wide = d.screenshot(os.path.join(out, f"{name}-1280.png"), 1280)
    d.cdp("Emulation.setDeviceMetricsOverride", {
        "width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    time.sleep(0.2)
    overflow = d.js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    d.cdp("Emulation.clearDeviceMetricsOverride")
    d.screenshot(os.path.join(out, f"{name}-390.png"), 390)
    check(overflow <= 1, f"{name}: no sideways scrolling at 390 px (overflow {overflow} px)")
    return wide


def scenario(d, url, token, mac, out):
    print("console: no session", flush=True)
    d.go(f"{url}/console/machines")
    check("/console/login?next=%2Fconsole%2Fmachines" in d.url(),
          f"a page without a session is redirected to the login page ({d.url()})")
    shots(d, out, "login")

    print("console: wrong token", flush=True)
    d.type("#token", "not-the-operator-token")
    d.click("form button[type=submit]")
    d.wait("the refusal", lambda: d.all("#login-error"))
    check(d.text("#login-error") == "Wrong operator token.", "a wrong operator token is refused")
    check("/console/login" in d.url(), "still on the login page")
    check(not d.js("return document.cookie.includes('tugboot_session')"),
          "no session cookie readable by the page")

    print("console: log in", flush=True)
    d.type("#token", token)
    d.click("form button[type=submit]")
    d.wait("the machines page after login", lambda: d.url().endswith("/console/machines"))
    check(token not in d.url(), "the token is not in the URL")

    print("console: the machine that netbooted", flush=True)

    def listed():
        d.go(f"{url}/console/machines")
        return mac in d.js("return document.body.innerText")
    d.wait(f"{mac} in the machines list", listed)
    check(True, f"{mac} is listed")
    d.go(f"{url}/console/machines?q={mac}")
    rows = d.all("table tbody tr")
    check(len(rows) == 1, f"searching for the MAC shows one machine ({len(rows)})")
    shots(d, out, "machines")
    d.js("document.querySelector('table tbody tr a').click()")
    d.wait("the machine page", lambda: "/console/machines/" in d.url())
    body = d.js("return document.body.innerText")
    check(mac in body, "the machine page shows its MAC")
    check("http" in body and "observed" in body.lower(),
          "its facts carry their provenance (observed over http)")
    check(INJECTED in d.text("#labels"), "the injected label value is shown as text")
    check(d.js("return document.querySelectorAll('#labels script').length") == 0,
          "the label made no script element")
    # Had it run, the alert would be open and every further WebDriver command would fail.
    check(d.js("return [...document.querySelectorAll('script')].every(s => s.src && !s.textContent)"),
          "no inline script element on the page")
    shots(d, out, "machine")

    print("console: overview", flush=True)
    d.go(f"{url}/console/")
    body = d.js("return document.body.innerText")
    check("Fleet" in body and "machines" in body, "the overview shows the fleet counts")
    check(d.all("svg"), "the overview draws its charts (SVG)")
    shots(d, out, "overview")

    print("console: images", flush=True)
    d.go(f"{url}/console/images")
    check("demo" in d.js("return document.body.innerText"), "the images page lists the published image")
    shots(d, out, "images")

    print("console: start a rollout", flush=True)
    d.go(f"{url}/console/rollouts")
    d.type("input[name=stages]", "50:3600, 100:0")
    d.click("#new button[type=submit]")
    d.wait("the confirmation page", lambda: d.all("#confirm"))
    check("/console/rollouts/new" in d.url(), "starting a rollout asks for confirmation first")
    shots(d, out, "rollout-confirm")
    d.click("#confirm")
    d.wait("the rollout page", lambda: d.all("#rollout-state"))
    state = d.text("#rollout-state")
    check(state in ("running", "pending"), f"the rollout started ({state})")
    rollout = d.url()

    print("console: forged POST without the CSRF token", flush=True)
    status = d.js_async(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0] + '/pause', {method: 'POST', body: new URLSearchParams({csrf: 'forged'})})"
        ".then(r => done(r.status), e => done(String(e)));", rollout)
    check(status == 403, f"a POST with a wrong CSRF token is refused ({status})")
    d.go(rollout)
    check(d.text("#rollout-state") == state, "the forged POST changed nothing")

    print("console: pause it", flush=True)
    d.click("#pause")
    d.wait("the pause confirmation", lambda: d.all("#confirm"))
    check(d.url().endswith("/pause"), "pausing asks for confirmation")
    d.click("#confirm")
    d.wait("the paused state", lambda: d.all("#rollout-state") and d.text("#rollout-state") == "paused")
    check(True, "the rollout is paused and the page says so")
    check(d.all("#resume") and not d.all("#pause"), "it now offers resume, not pause")
    shots(d, out, "rollout")

    print("console: live events", flush=True)
    d.go(f"{url}/console/events")
    body = d.wait("the events page", lambda: d.js("return document.body.innerText"))
    check("paused" in body, "the event view lists the rollout's transition")
    # Resuming in another request must appear on the open page without a reload (SSE).
    d.js_async(
        "const done = arguments[arguments.length - 1];"
        "setTimeout(() => done(1), 1500);")  # let the stream connect
    rid = rollout.rstrip("/").rsplit("/", 1)[1]
    csrf = d.js("return document.querySelector('input[name=csrf]').value")
    status = d.js_async(
        "const done = arguments[arguments.length - 1];"
        "fetch('/console/rollouts/' + arguments[0] + '/resume', {method: 'POST', redirect: 'manual',"
        " body: new URLSearchParams({csrf: arguments[1]})}).then(r => done(r.status || 303), e => done(String(e)));",
        rid, csrf)
    check(status in (0, 303), f"resume accepted ({status})")
    d.wait("the resume pushed to the open page",
           lambda: "paused \u2192 running" in d.js("return document.body.innerText"))
    check(True, "the live view received the transition over SSE")
    shots(d, out, "events")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--mac", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    token = open(a.token_file).read().strip()
    port = free_port()
    log = tempfile.TemporaryFile()
    driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=log, stderr=log)
    profile = tempfile.mkdtemp(prefix="tugboot-chromium-")
    d = None
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise Failed("chromedriver did not start")
                time.sleep(0.1)
        d = Driver(port, spki_sha256(a.cert), profile)
        scenario(d, a.url.rstrip("/"), token, a.mac, a.out)
        print("console: all browser checks passed", flush=True)
        return 0
    except Failed as e:
        print(f"console browser test FAILED: {e}", file=sys.stderr)
        if d is not None:
            try:
                print(f"  at {d.url()}\n{d.js('return document.body.innerText')[:3000]}", file=sys.stderr)
                d.screenshot(os.path.join(a.out, "failure.png"), 1280)
            except Exception:  # noqa: BLE001
                pass
        return 1
    finally:
        if d is not None:
            d.quit()
        driver.terminate()
        driver.wait(timeout=10)
        subprocess.run(["rm", "-rf", profile], check=False)


if __name__ == "__main__":
    sys.exit(main())
