"""Run the public reference node (PyPI ``stigmem-node==0.9.0a12``) for interop tests.

The reference is import-named ``stigmem_node`` just like this project, so it is
installed into its own virtual environment, outside the repository, and is only
ever driven over HTTP (loopback only) or through its own console scripts run as
subprocesses.  Nothing here imports it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REFERENCE_VERSION = "0.9.0a12"
REFERENCE_REQUIREMENT = f"stigmem-node=={REFERENCE_VERSION}"
_MARKER = ".refnode-complete"
_PYPI_PROBE_URL = "https://pypi.org/simple/stigmem-node/"


class ReferenceUnavailable(RuntimeError):
    """PyPI could not be reached, so the reference node cannot be installed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- utils


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jcs(obj: Any) -> bytes:
    """RFC 8785 canonical JSON for the value types used here (no floats)."""
    return _jcs(obj).encode("utf-8")


def _jcs(obj: Any) -> str:
    if obj is None or isinstance(obj, (bool, str)):
        return json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        raise TypeError("jcs(): floats are not supported by this helper")
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(_jcs(v) for v in obj) + "]"
    if isinstance(obj, dict):
        # RFC 8785 orders members by the UTF-16 code units of their names.
        keys = sorted(obj, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + _jcs(obj[k]) for k in keys) + "}"
    raise TypeError(f"jcs(): unsupported type {type(obj).__name__}")


def pubkey_fingerprint(pubkey_b64url: str) -> str:
    """Reference approval fingerprint: sha256 over the base64url *text* of the key."""
    return "sha256:" + hashlib.sha256(pubkey_b64url.encode("utf-8")).hexdigest()


def utc_now_z(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clean_env() -> dict[str, str]:
    """The parent environment minus anything that could leak our package or settings in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STIGMEM_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    }
    env["PYTHONNOUSERSITE"] = "1"
    return env


# --------------------------------------------------------------------------- venv


def reference_cache_dir() -> Path:
    override = os.environ.get("STIGMEM_REFNODE_CACHE")
    if override:
        return Path(override).expanduser().resolve()
    return Path.home() / ".cache" / "stigmem-test" / f"refnode-{REFERENCE_VERSION}"


def _probe_pypi() -> None:
    index = os.environ.get("PIP_INDEX_URL")
    url = index.rstrip("/") + "/stigmem-node/" if index else _PYPI_PROBE_URL
    try:
        r = httpx.get(url, timeout=20.0, follow_redirects=True)
    except httpx.TransportError as exc:
        raise ReferenceUnavailable(f"cannot reach package index {url}: {exc!r}") from exc
    if r.status_code >= 500:
        raise ReferenceUnavailable(f"package index {url} answered {r.status_code}")
    if r.status_code != 200:
        raise RuntimeError(f"package index {url} answered {r.status_code}; stigmem-node not listed?")


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _migration_dirs(venv: Path) -> list[Path]:
    """The two places the reference looks for ``migrations/``.

    The server uses ``Path(db.py).parents[2] / "migrations"`` (``<venv>/lib/pythonX.Y/migrations``);
    the bundled conformance conftest looks one level higher (``<venv>/lib/migrations``).
    """
    out = _run(
        [str(venv_python(venv)), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=venv,
    )
    site = Path(out.stdout.strip())
    return [site.parent / "migrations", site.parent.parent / "migrations"]


def ensure_reference_venv() -> Path:
    """Create (once, cached outside the repo) the reference venv and return its path.

    Raises ``ReferenceUnavailable`` only when the package index cannot be reached.
    """
    venv = reference_cache_dir()
    if (venv / _MARKER).is_file() and (venv / "bin" / "stigmem-node").exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / (venv.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (venv / _MARKER).is_file() and (venv / "bin" / "stigmem-node").exists():
                return venv
            _build_reference_venv(venv)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return venv


def _build_reference_venv(venv: Path) -> None:
    # A venv cannot be renamed after creation (script shebangs hold absolute paths),
    # so it is built in place and a marker file is written last; a leftover without
    # the marker is a half-finished attempt and is removed first.
    if venv.exists():
        shutil.rmtree(venv)
    _probe_pypi()
    _run([sys.executable, "-m", "venv", str(venv)], cwd=venv.parent)
    py = str(venv_python(venv))
    try:
        _run([py, "-I", "-m", "pip", "install", "--quiet", REFERENCE_REQUIREMENT], cwd=venv)
        with tempfile.TemporaryDirectory(prefix="refnode-sdist-") as tmp:
            tmpd = Path(tmp)
            _run(
                [py, "-I", "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                 "--dest", str(tmpd), REFERENCE_REQUIREMENT],
                cwd=tmpd,
            )
            sdists = sorted(tmpd.glob("stigmem_node-*.tar.gz")) + sorted(tmpd.glob("stigmem-node-*.tar.gz"))
            if not sdists:
                raise RuntimeError(f"no sdist downloaded into {tmpd}: {os.listdir(tmpd)}")
            sql: dict[str, bytes] = {}
            with tarfile.open(sdists[0]) as tar:
                for member in tar.getmembers():
                    parts = Path(member.name).parts
                    # <root>/migrations/NNN_x.sql
                    if member.isfile() and len(parts) == 3 and parts[1] == "migrations" and parts[2].endswith(".sql"):
                        f = tar.extractfile(member)
                        assert f is not None
                        sql[parts[2]] = f.read()
            if not sql:
                raise RuntimeError(f"sdist {sdists[0].name} has no migrations/*.sql")
        for d in _migration_dirs(venv):
            d.mkdir(parents=True, exist_ok=True)
            for name, data in sql.items():
                (d / name).write_bytes(data)
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    (venv / _MARKER).write_text(f"{REFERENCE_REQUIREMENT}\nmigrations={len(sql)}\n")


# --------------------------------------------------------------------------- node


ADMIN_PERMISSIONS = "admin,write,read,federate,admin:federation"


class ReferenceNode:
    """One reference node process, bound to 127.0.0.1, in its own work directory.

    Use as a context manager (``with ReferenceNode(tmp, port) as a: ...``) or call
    ``start()`` / ``stop()``.  All traffic goes over HTTP; the admin key is created
    with the reference's own ``stigmem auth bootstrap-key`` console script.
    """

    def __init__(
        self,
        work_dir: Path | str,
        port: int | None = None,
        *,
        pull_interval_s: int = 1,
        node_id: str | None = None,
        extra_env: dict[str, str] | None = None,
        venv: Path | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pull_interval_s = pull_interval_s
        self.fixed_node_id = node_id
        self.extra_env = dict(extra_env or {})
        self.venv = venv
        self.startup_timeout_s = startup_timeout_s
        self.log_path = self.work_dir / "refnode.log"
        self.db_path = self.work_dir / "node.db"
        self.privkey = Ed25519PrivateKey.generate()
        self.privkey_raw = self.privkey.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        self.pubkey_raw = self.privkey.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.pubkey = b64url(self.pubkey_raw)
        self.privkey_b64 = b64url(self.privkey_raw)
        self.api_key = "refnode-admin-" + os.urandom(24).hex()
        self.node_id: str | None = None
        self.entity_uri: str | None = None
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self._client: httpx.Client | None = None

    # ---------------------------------------------------------------- lifecycle

    def env(self) -> dict[str, str]:
        env = _clean_env()
        env.update(
            {
                "STIGMEM_HOST": "127.0.0.1",
                "STIGMEM_PORT": str(self.port),
                "STIGMEM_NODE_URL": self.url,
                "STIGMEM_DB_PATH": str(self.db_path),
                "STIGMEM_TL_LOCAL_PATH": str(self.work_dir / "tl.jsonl"),
                "STIGMEM_FEDERATION_ENABLED": "true",
                "STIGMEM_FEDERATION_INSECURE": "1",
                "STIGMEM_FEDERATION_PUBKEY": self.pubkey,
                "STIGMEM_FEDERATION_PRIVKEY": self.privkey_b64,
                "STIGMEM_FEDERATION_PULL_INTERVAL_S": str(self.pull_interval_s),
                "STIGMEM_RATE_LIMIT_WRITE_PER_HOUR": "100000000",
                "STIGMEM_RATE_LIMIT_READ_PER_HOUR": "100000000",
            }
        )
        if self.fixed_node_id:
            env["STIGMEM_NODE_ID"] = self.fixed_node_id
        env.update(self.extra_env)
        return env

    def start(self) -> ReferenceNode:
        if self.proc is not None:
            raise RuntimeError("reference node already started")
        if self.venv is None:
            self.venv = ensure_reference_venv()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.venv / "bin" / "stigmem-node")],
            cwd=self.work_dir,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._client = httpx.Client(base_url=self.url, timeout=15.0, trust_env=False)
        try:
            self._wait_healthy()
            wk = self.well_known()
            self.node_id = wk["node_id"]
            self.entity_uri = wk.get("entity_uri", self.url)
            if wk.get("federation_pubkey") != self.pubkey:
                raise RuntimeError(f"reference node publishes a different key: {wk!r}")
            self._bootstrap_key()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        last_err: str = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"reference node exited with {self.proc.returncode} during startup\n{self.log_tail()}"
                )
            try:
                r = httpx.get(self.url + "/healthz", timeout=2.0, trust_env=False)
                if r.status_code == 200:
                    return
                last_err = f"HTTP {r.status_code}"
            except httpx.TransportError as exc:
                last_err = repr(exc)
            time.sleep(0.1)
        raise RuntimeError(
            f"reference node not healthy after {self.startup_timeout_s}s ({last_err})\n{self.log_tail()}"
        )

    def _bootstrap_key(self) -> None:
        assert self.venv is not None
        env = self.env()
        env["STIGMEM_BOOTSTRAP_KEY"] = self.api_key
        proc = subprocess.run(
            [str(self.venv / "bin" / "stigmem"), "auth", "bootstrap-key",
             "--entity-uri", "agent:interop-admin", "--permissions", ADMIN_PERMISSIONS],
            cwd=self.work_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"stigmem auth bootstrap-key failed ({proc.returncode})\n{proc.stdout}\n{proc.stderr}\n{self.log_tail()}"
            )

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> ReferenceNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---------------------------------------------------------------- HTTP

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError("reference node not running")
        return self._client

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def request(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", None) or {})
        if auth:
            headers.update(self.auth_headers())
        return self.client.request(method, path, headers=headers, **kw)

    def _json(self, r: httpx.Response, *ok: int) -> Any:
        if r.status_code not in (ok or (200,)):
            raise RuntimeError(f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text}")
        return r.json()

    def well_known(self) -> dict[str, Any]:
        return self._json(self.client.get("/.well-known/stigmem"))

    # ---------------------------------------------------------------- identity

    @property
    def fingerprint(self) -> str:
        return pubkey_fingerprint(self.pubkey)

    @property
    def key_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.pubkey_raw).hexdigest()[:32]

    def sign(self, data: bytes) -> str:
        return b64url(self.privkey.sign(data))

    def manifest(self, validity: timedelta = timedelta(days=30)) -> dict[str, Any]:
        """The org manifest of this node, signed with its federation key (JCS body)."""
        assert self.node_id and self.entity_uri
        body: dict[str, Any] = {
            "entities": [self.entity_uri, self.node_id],
            "entity_uri": self.entity_uri,
            "expires_at": utc_now_z(validity),
            "issued_at": utc_now_z(),
            "key_id": self.key_id,
            "public_key": self.pubkey,
            "rotation_events": [],
        }
        body["signature"] = self.sign(jcs(body))
        return body

    def put_manifest(self) -> dict[str, Any]:
        return self._json(self.request("PUT", "/v1/federation/manifest", json=self.manifest()))

    def declaration(self, allowed_scopes: Iterable[str] = ("company", "public")) -> dict[str, Any]:
        """This node's signed PeerDeclaration, built the way the reference CLI builds it."""
        assert self.node_id
        fields: dict[str, Any] = {
            "allowed_scopes": sorted(allowed_scopes),
            "federation_pubkey": self.pubkey,
            "node_id": self.node_id,
            "node_url": self.url,
            "signed_at": utc_now_z(),
        }
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return {**fields, "declaration_sig": self.sign(canonical)}

    # ---------------------------------------------------------------- federation

    def register_peer(self, declaration: dict[str, Any]) -> dict[str, Any]:
        return self._json(self.request("POST", "/v1/federation/peers", json=declaration), 201)

    def approve(self, peer_id: str, fingerprint: str) -> dict[str, Any]:
        return self._json(
            self.request(
                "POST", f"/v1/federation/peers/{peer_id}/approve", json={"pubkey_fingerprint": fingerprint}
            )
        )

    def list_peers(self) -> list[dict[str, Any]]:
        return self._json(self.request("GET", "/v1/federation/peers"))["peers"]

    def peer_by_node_id(self, node_id: str) -> dict[str, Any] | None:
        for p in self.list_peers():
            if p["node_id"] == node_id:
                return p
        return None

    def audit(self, **params: Any) -> list[dict[str, Any]]:
        params.setdefault("limit", 500)
        return self._json(self.request("GET", "/v1/federation/audit", params=params))["entries"]

    def wait_manifest_bound(self, peer_id: str, timeout_s: float = 10.0) -> None:
        """Wait until the approval's background manifest fetch has finished for *peer_id*.

        The task ends by writing a ``tl_proof_missing`` audit row; the entity_uri
        binding (without which every pulled fact is skipped) happens just before it.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(e.get("event_type") == "tl_proof_missing" for e in self.audit(peer_id=peer_id)):
                return
            time.sleep(0.05)
        raise TimeoutError(f"approval background task for peer {peer_id} did not finish\n{self.log_tail()}")

    # ---------------------------------------------------------------- facts

    def assert_fact(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(self.request("POST", "/v1/facts", json=body), 201)

    def query_facts(self, **params: Any) -> list[dict[str, Any]]:
        """GET /v1/facts.  Federated copies carry a low source_trust and are hidden
        unless ``include_low_trust`` is set, so it defaults to true here."""
        params.setdefault("include_low_trust", "true")
        params.setdefault("limit", 500)
        return self._json(self.request("GET", "/v1/facts", params=params))["facts"]

    def get_fact(self, fact_id: str) -> httpx.Response:
        return self.request("GET", f"/v1/facts/{fact_id}")


def federate(puller: ReferenceNode, origin: ReferenceNode, scopes: Iterable[str] = ("company", "public")) -> None:
    """Make *puller* replicate from *origin* (and register/approve both ways).

    Order avoids the reference's silent-skip trap: both manifests first, then the
    puller approves the origin and binds its entity_uri, and only then does the
    origin approve the puller (which is what lets the puller's pulls succeed).
    """
    scopes = list(scopes)
    puller.put_manifest()
    origin.put_manifest()
    on_puller = puller.register_peer(origin.declaration(scopes))
    on_origin = origin.register_peer(puller.declaration(scopes))
    if on_puller["status"] != "pending_approval" or on_origin["status"] != "pending_approval":
        raise RuntimeError(f"registration not pending_approval: {on_puller!r} / {on_origin!r}")
    puller.approve(on_puller["peer_id"], origin.fingerprint)
    puller.wait_manifest_bound(on_puller["peer_id"])
    origin.approve(on_origin["peer_id"], puller.fingerprint)
    origin.wait_manifest_bound(on_origin["peer_id"])
