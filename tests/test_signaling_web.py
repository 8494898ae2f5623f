"""What a signaling node serves to browsers (``signaling/web.py``, ``docs/browser.md``), without a browser.

A real ``ai4all signal`` process serving a copy of the tiny Llama export (with a sibling node, and
``AI4ALL_LEDGER_POW_BITS`` of its own) answers each route with its MIME type and headers, the page
configuration, the model's listed files and nothing else: traversal attempts are sent byte for byte
with ``http.client`` (which, unlike httpx, leaves ``..`` and percent escapes alone). The websocket at
``/`` still serves signaling next to the page at ``/``. In-process apps (Starlette's TestClient) cover
what a subprocess cannot set up: a node id that tries to close the config's ``<script>``, links that
point out of a served folder, the addresses in the configuration. ``--model-dir`` refuses every kind of
bad directory with a one-line error.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from python_peer.core.canonical import ServedSpan
from python_peer.core.economics import GRANT_POW_BITS
from python_peer.core.ice import IceSettings
from python_peer.core.manifest import load_manifest
from python_peer.identity import Identity
from python_peer.signal_client import SignalClient, SignalClientConfig
from signaling.app import browser_site, create_app
from signaling.errors import SiteError
from signaling.node import NodeConfig, SignalingNode
from signaling.web import PAGE_CSP, WEB_DIR, BrowserSite, ServedModel
from tests.support.procs import Node, free_port, run_cli

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
POW_BITS = 7
SECRET = "never-served-4d1c"  # written next to the model's files, in no manifest
PAGE_HEADERS = {
    "content-security-policy": PAGE_CSP,
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-embedder-policy": "require-corp",
    "x-content-type-options": "nosniff",
}
STATIC_HEADERS = {
    "access-control-allow-origin": "*",
    "cross-origin-resource-policy": "cross-origin",
    "x-content-type-options": "nosniff",
}
CONFIG_RE = re.compile(r'<script type="application/json" id="ai4all-config">(.*?)</script>', re.DOTALL)


@pytest.fixture(scope="module")
def model_copy(tiny_llama_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny export plus files that must never be served: a stray file, a hidden one, a link out."""
    directory = tmp_path_factory.mktemp("served") / "model"
    shutil.copytree(tiny_llama_export, directory)
    (directory / "secret.txt").write_text(SECRET)
    (directory / ".hidden").write_text(SECRET)
    (directory / "outside.txt").symlink_to(ROOT / "pyproject.toml")
    return directory


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, model_copy: Path) -> Iterator[tuple[Node, Node]]:
    logs = tmp_path_factory.mktemp("signaling-web")
    sibling = Node("web-b", logs, accept=("web-a",))
    node = Node(
        "web-a",
        logs,
        siblings=(sibling,),
        model_dirs=[model_copy],
        env={"AI4ALL_LEDGER_POW_BITS": str(POW_BITS)},
    )
    try:
        sibling.wait()
        node.wait(siblings=1)
        yield node, sibling
    finally:
        assert (node.stop(), sibling.stop()) == (0, 0)


def get(node: Node, target: str) -> tuple[int, dict[str, str], bytes]:
    """``GET target`` sent as written: no normalisation of ``..``, no re-encoding."""
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def has_headers(headers: dict[str, str], expected: dict[str, str]) -> bool:
    return all(headers.get(k) == v for k, v in expected.items())


# --- routes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "module", "title"), [("/", "contribute.js", "Contribute"), ("/chat", "browser_chat.js", "Chat")]
)
def test_pages_carry_config_module_and_isolation_headers(
    nodes: tuple[Node, Node], path: str, module: str, title: str
) -> None:
    node, _ = nodes
    status, headers, body = get(node, path)
    html = body.decode()
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert has_headers(headers, PAGE_HEADERS), headers
    assert "access-control-allow-origin" not in headers  # a page is not for other origins to read
    assert f'<script type="module" src="/web/src/ui/{module}"></script>' in html
    assert '<link rel="stylesheet" href="/web/src/ui/node.css">' in html
    assert '<main id="app"' in html and "<noscript>" in html and f"<title>{title}" in html
    match = CONFIG_RE.search(html)
    assert match is not None
    assert json.loads(match.group(1)) == json.loads(get(node, "/v1/config")[2])


def test_config_names_this_node_its_siblings_models_and_ledger_rules(
    nodes: tuple[Node, Node], model_copy: Path
) -> None:
    node, sibling = nodes
    status, headers, body = get(node, "/v1/config")
    assert status == 200 and headers["content-type"] == "application/json"
    assert has_headers(headers, STATIC_HEADERS)
    name = load_manifest(model_copy).name
    assert json.loads(body) == {
        "node_id": "web-a",
        "signal": [node.url, sibling.url],
        "models": [{"name": name, "base": f"{node.http_url}/models/{name}/", "signed": False}],
        "ledger": {"pow_bits": POW_BITS},
        "python_core": f"{node.http_url}/py/python_peer/core/",
        "ice": {"servers": [], "loopback_only": True},  # no --ice-* flag: loopback only, as before
        # no --trust-publisher; the test session's AI4ALL_ALLOW_UNSIGNED=1 lets it serve a local export
        "publishers": {"trusted": [], "allow_unsigned": True},
    }
    # The sibling learned web-a when it dialed in, and has no models and the test's proof of work.
    other = json.loads(get(sibling, "/v1/config")[2])
    assert other["signal"] == [sibling.url, node.url] and other["models"] == []
    assert other["ledger"] == {"pow_bits": int(os.environ["AI4ALL_LEDGER_POW_BITS"])}


@pytest.mark.parametrize(
    ("path", "mime", "source"),
    [
        ("/web/src/ui/node.css", "text/css; charset=utf-8", "web/src/ui/node.css"),
        ("/web/src/runtime/onnx.js", "text/javascript; charset=utf-8", "web/src/runtime/onnx.js"),
        (
            "/web/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs",
            "text/javascript; charset=utf-8",
            "web/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs",
        ),
        (
            "/web/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
            "application/wasm",
            "web/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
        ),
        (
            "/web/node_modules/pyodide/pyodide.asm.wasm",
            "application/wasm",
            "web/node_modules/pyodide/pyodide.asm.wasm",
        ),
        (
            "/web/node_modules/pyodide/python_stdlib.zip",
            "application/zip",
            "web/node_modules/pyodide/python_stdlib.zip",
        ),
        (
            "/web/node_modules/pyodide/pyodide-lock.json",
            "application/json",
            "web/node_modules/pyodide/pyodide-lock.json",
        ),
        (
            "/web/node_modules/@huggingface/tokenizers/dist/tokenizers.min.mjs",
            "text/javascript; charset=utf-8",
            "web/node_modules/@huggingface/tokenizers/dist/tokenizers.min.mjs",
        ),
        (
            "/web/node_modules/@huggingface/jinja/dist/index.js",
            "text/javascript; charset=utf-8",
            "web/node_modules/@huggingface/jinja/dist/index.js",
        ),
        (
            "/web/node_modules/@noble/hashes/sha2.js",
            "text/javascript; charset=utf-8",
            "web/node_modules/@noble/hashes/sha2.js",
        ),
        (
            "/py/python_peer/core/economics.py",
            "text/x-python; charset=utf-8",
            "python_peer/core/economics.py",
        ),
        ("/py/python_peer/core/__init__.py", "text/x-python; charset=utf-8", "python_peer/core/__init__.py"),
    ],
)
def test_static_files_with_mime_types_and_cross_origin_headers(
    nodes: tuple[Node, Node], path: str, mime: str, source: str
) -> None:
    status, headers, body = get(nodes[0], path)
    assert status == 200 and headers["content-type"] == mime
    assert has_headers(headers, STATIC_HEADERS), headers
    assert body == (ROOT / source).read_bytes()
    assert int(headers["content-length"]) == len(body)


RELATIVE_IMPORT_RE = re.compile(r"""^(?:import|export)\b[^'"]*?\bfrom\s*['"](\./[^'"]+)['"]""", re.MULTILINE)


def test_the_ledgers_hash_module_and_everything_it_imports_are_served(nodes: tuple[Node, Node]) -> None:
    """The ledger's proof of work (``web/src/ledger/pow.js``) imports @noble/hashes' ``sha2.js``, which imports
    its siblings."""
    pow_module = (ROOT / "web/src/ledger/pow.js").read_text()
    assert "from '../../node_modules/@noble/hashes/sha2.js'" in pow_module
    package = ROOT / "web/node_modules/@noble/hashes"
    pending, seen = ["sha2.js"], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        status, headers, body = get(nodes[0], f"/web/node_modules/@noble/hashes/{name}")
        assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8", name
        assert body == (package / name).read_bytes(), name
        pending += [match.removeprefix("./") for match in RELATIVE_IMPORT_RE.findall(body.decode())]
    assert {"sha2.js", "_md.js", "_u64.js", "utils.js"} <= seen, seen


def test_model_files_are_the_ones_the_manifest_lists(nodes: tuple[Node, Node], model_copy: Path) -> None:
    node, _ = nodes
    manifest = load_manifest(model_copy)
    base = f"/models/{manifest.name}/"
    listed = {"manifest.json": "application/json", "tokenizer.json": "application/json"}
    listed |= {shard.file: "application/octet-stream" for shard in manifest.shards}
    template = manifest.tokenizer.get("chat_template_file")
    assert template == "chat_template.jinja"
    listed[template] = "text/plain; charset=utf-8"
    for file, mime in listed.items():
        status, headers, body = get(node, base + file)
        assert status == 200 and headers["content-type"] == mime, file
        assert has_headers(headers, STATIC_HEADERS) and int(headers["content-length"]) == len(body)
        assert body == (model_copy / file).read_bytes(), file


def test_websocket_signaling_still_works_on_the_page_path(nodes: tuple[Node, Node]) -> None:
    import asyncio

    node, sibling = nodes

    async def meet() -> list[str]:
        config = SignalClientConfig(
            urls=(node.url,),
            request_timeout_s=5.0,
            connect_timeout_s=5.0,
            serves=(ServedSpan("web/m", 0, 2),),
        )
        server = await SignalClient.create(Identity.generate(), config)
        user_config = SignalClientConfig(urls=(sibling.url,), request_timeout_s=5.0, connect_timeout_s=5.0)
        async with server, await SignalClient.create(Identity.generate(), user_config) as user:
            for _ in range(100):
                found = [a.peer_id for a in await user.lookup("web/m", 0, 2)]
                if found:
                    return [server.peer_id, *found]
                await asyncio.sleep(0.05)
        return [server.peer_id]

    peers = asyncio.run(meet())
    assert len(peers) == 2 and peers[0] == peers[1], "an announcement on web-a must reach web-b"
    assert get(node, "/")[0] == 200  # and the page is still there on the same path


def test_health_and_directory_stay(nodes: tuple[Node, Node]) -> None:
    node, _ = nodes
    assert node.health() is not None and node.health()["node_id"] == "web-a"  # type: ignore[index]
    assert node.directory()["node_id"] == "web-a"


# --- what is never served -----------------------------------------------------------------------------


REFUSED = [
    "/web/src/../../pyproject.toml",
    "/web/src/%2e%2e/%2e%2e/pyproject.toml",
    "/web/src/%2E%2E%2F%2E%2E%2Fpyproject.toml",
    "/web/src/..%2f..%2fpyproject.toml",
    "/web/src/..%5c..%5cpyproject.toml",
    "/web/src/%252e%252e/%252e%252e/pyproject.toml",
    "/web/src/./ui/node.css",
    "/web/src//ui/node.css",
    "/web/src/ui/node.css%00.js",
    "/web/src/ui/node.css/",
    "/web/src/",
    "/web/src",
    "/web/src/ui",
    "/web/",
    "/web/package.json",
    "/web/package-lock.json",
    "/web/templates/node/page.html",
    "/web/node_modules/",
    "/web/node_modules/ws/package.json",
    "/web/node_modules/ws/index.js",
    "/web/node_modules/onnxruntime-web/package.json",
    "/web/node_modules/onnxruntime-web/dist/../package.json",
    "/web/node_modules/onnxruntime-web/dist%2f..%2fpackage.json",
    "/web/node_modules/onnxruntime-web/distx/ort.min.mjs",
    "/web/node_modules/pyodide/../ws/package.json",
    "/web/node_modules/pyodide/",
    "/web/node_modules/@huggingface/jinja/package.json",
    "/web/node_modules/@huggingface/jinja/dist/../../tokenizers/package.json",
    "/web/node_modules/onnxruntime-common/dist/esm/index.js",
    "/web/node_modules/@noble/",
    "/web/node_modules/@noble/hashes/",
    "/web/node_modules/@noble/hashes/../../ws/index.js",
    "/web/node_modules/@noble/hashes/%2e%2e/%2e%2e/ws/package.json",
    "/web/node_modules/@noble/hashes/src/../../../ws/index.js",
    "/web/node_modules/@noble/hashesx/sha2.js",
    "/py/python_peer/core/",
    "/py/python_peer/core/../ledger_service.py",
    "/py/python_peer/core/%2e%2e/ledger_service.py",
    "/py/python_peer/core/__pycache__/economics.cpython-311.pyc",
    "/py/python_peer/core/manifest",
    "/py/python_peer/identity.py",
    "/py/python_peer/core//etc/passwd",
    "/py/python_peer/core/%2fetc%2fpasswd.py",
    "//etc/passwd",
    "/web/src//etc/passwd",
    "/web/src/%2fetc%2fpasswd",
    "/models/",
    "/models/x/manifest.json",
    "/models/../pyproject.toml",
    "/models/x/../../pyproject.toml",
    "/web/src/" + "a" * 5000 + ".js",
    "/index.html",
    "/.git/config",
]


@pytest.mark.parametrize("target", REFUSED)
def test_paths_outside_the_roots_are_not_found(nodes: tuple[Node, Node], target: str) -> None:
    status, headers, body = get(nodes[0], target)
    assert status == 404, (target, status, body[:200])
    assert headers["x-content-type-options"] == "nosniff"
    assert b"[project]" not in body and b"root:" not in body and len(body) < 1000


def test_model_files_not_listed_are_not_found(nodes: tuple[Node, Node], model_copy: Path) -> None:
    node, _ = nodes
    name = load_manifest(model_copy).name
    for file in (
        "secret.txt",
        ".hidden",
        "outside.txt",
        "",
        ".",
        "..",
        "%2e%2e/secret.txt",
        "../model/secret.txt",
        "manifest.json/",
        "manifest.json%00",
        "MANIFEST.JSON",
        "sub/manifest.json",
    ):
        status, _, body = get(node, f"/models/{name}/{file}")
        assert status == 404, (file, status)
        assert SECRET.encode() not in body and b"[project]" not in body


# --- in-process: escaping, links out, addresses ----------------------------------------------------------


def _client(
    config: NodeConfig, site: BrowserSite | None = None, *, models: list[ServedModel] | None = None
) -> TestClient:
    node = SignalingNode(config)
    return TestClient(create_app(node, site or browser_site(node, models or [])))


def test_config_cannot_break_out_of_its_script_element(model_copy: Path) -> None:
    evil = "</script><script>alert(1)</script><!--"
    with _client(NodeConfig(node_id=evil, url="ws://signal.example:9000")) as client:
        html = client.get("/").text
    match = CONFIG_RE.search(html)
    assert match is not None and json.loads(match.group(1))["node_id"] == evil
    assert html.count("</script>") == 2 and "<script>" not in html and "<!--" not in html


def test_config_addresses_follow_the_url_or_the_request(model_copy: Path) -> None:
    model = ServedModel.load(model_copy)
    config = NodeConfig(node_id="n", url="wss://signal.example.org", siblings=("ws://10.0.0.2:1",))
    with _client(config, models=[model]) as client:
        body = client.get("/v1/config", headers={"Host": "attacker.example"}).json()
    assert body["signal"] == ["wss://signal.example.org", "ws://10.0.0.2:1"]
    assert body["models"][0]["base"] == f"https://signal.example.org/models/{model.name}/"
    assert body["python_core"] == "https://signal.example.org/py/python_peer/core/"
    assert body["ledger"] == {"pow_bits": GRANT_POW_BITS}

    # Listening on every address without --url: the browser's own way in is the address to give.
    with _client(NodeConfig(node_id="n", host="0.0.0.0", port=8765)) as client:
        body = client.get("/v1/config", headers={"Host": "192.168.1.20:8765"}).json()
        assert body["signal"] == ["ws://192.168.1.20:8765"]
        assert body["python_core"] == "http://192.168.1.20:8765/py/python_peer/core/"
        bad = client.get("/v1/config", headers={"Host": 'x"><script>'}).json()
        assert bad["python_core"] == "http://0.0.0.0:8765/py/python_peer/core/"  # a bad Host is not echoed


def test_model_names_with_a_slash_are_served_under_an_escaped_base(model_copy: Path, tmp_path: Path) -> None:
    directory = tmp_path / "org-model"
    shutil.copytree(model_copy, directory, symlinks=True)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["model"]["name"] = "org/tiny:v1"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    model = ServedModel.load(directory)
    with _client(NodeConfig(node_id="n"), models=[model]) as client:
        base = client.get("/v1/config").json()["models"][0]["base"]
        assert base == "http://testserver/models/org%2Ftiny%3Av1/"
        assert client.get(base + "manifest.json").json()["model"]["name"] == "org/tiny:v1"
        assert client.get("/models/org/tiny:v1/tokenizer.json").status_code == 200
        assert client.get("/models/org/tiny:v1/secret.txt").status_code == 404
        assert client.get("/models/org/manifest.json").status_code == 404


def test_links_out_of_a_served_folder_are_not_followed(tmp_path: Path) -> None:
    web = tmp_path / "web"
    shutil.copytree(WEB_DIR / "templates", web / "templates")
    (web / "src" / "ui").mkdir(parents=True)
    (web / "src" / "ui" / "ok.js").write_text("export const ok = 1;\n")
    (web / "src" / "ui" / "linked-in.js").symlink_to(web / "src" / "ui" / "ok.js")
    (web / "src" / "ui" / "out.js").symlink_to(ROOT / "pyproject.toml")
    (web / "src" / "up").symlink_to(ROOT)
    (web / "src" / "embed").mkdir()
    (web / "src" / "embed" / "embed.js").write_text("(() => {})();\n")
    dist = web / "node_modules" / "onnxruntime-web" / "dist"
    dist.mkdir(parents=True)
    (dist / "escape.mjs").symlink_to(ROOT / "pyproject.toml")
    site = BrowserSite("n", "ws://127.0.0.1:1", False, web_dir=web)
    with _client(NodeConfig(node_id="n"), site) as client:
        assert client.get("/web/src/ui/ok.js").text == "export const ok = 1;\n"
        assert client.get("/web/src/ui/linked-in.js").status_code == 200  # a link that stays inside
        embed = client.get("/embed.js")
        assert embed.status_code == 200 and embed.headers["content-type"] == "text/javascript; charset=utf-8"
        assert has_headers(dict(embed.headers), STATIC_HEADERS)
        for path in (
            "/web/src/ui/out.js",
            "/web/src/up/pyproject.toml",
            "/web/node_modules/onnxruntime-web/dist/escape.mjs",
        ):
            response = client.get(path)
            assert response.status_code == 404 and "[project]" not in response.text, path


# --- --model-dir refusals -------------------------------------------------------------------------------


def _signal(*dirs: Path) -> tuple[int, str]:
    args = ["signal", "--port", "1"]
    for directory in dirs:
        args += ["--model-dir", str(directory)]
    result = run_cli(args, timeout=60)
    return result.returncode, result.stderr.strip()


def _edited(source: Path, tmp_path: Path, name: str, edit: Any) -> Path:
    directory = tmp_path / name
    shutil.copytree(source, directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    edit(manifest, directory)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_bad_model_dirs_are_refused_with_the_reason(tiny_llama_export: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "manifest.json").write_text("{not json")
    file = tmp_path / "a-file"
    file.write_text("x")

    def drop_shard(manifest: dict[str, Any], directory: Path) -> None:
        (directory / manifest["shards"][0]["file"]).unlink()

    def truncate_shard(manifest: dict[str, Any], directory: Path) -> None:
        shard = directory / manifest["shards"][1]["file"]
        shard.write_bytes(shard.read_bytes()[:100])

    def link_shard_out(manifest: dict[str, Any], directory: Path) -> None:
        shard = directory / manifest["shards"][0]["file"]
        outside = tmp_path / "outside.onnx"
        shutil.move(shard, outside)
        shard.symlink_to(outside)

    def bad_name(manifest: dict[str, Any], directory: Path) -> None:
        manifest["model"]["name"] = "</script>"

    def dot_name(manifest: dict[str, Any], directory: Path) -> None:
        manifest["model"]["name"] = "a/../b"

    def tokenizer_out(manifest: dict[str, Any], directory: Path) -> None:
        manifest["tokenizer"]["file"] = "../../pyproject.toml"

    def no_tokenizer(manifest: dict[str, Any], directory: Path) -> None:
        del manifest["tokenizer"]["file"]

    cases = {
        tmp_path / "missing": "not a directory",
        file: "not a directory",
        empty: "manifest.json does not exist",
        garbled: "is not valid JSON",
        _edited(tiny_llama_export, tmp_path, "dropped", drop_shard): "which is not a file in that directory",
        _edited(tiny_llama_export, tmp_path, "truncated", truncate_shard): "has 100 bytes, the manifest says",
        _edited(
            tiny_llama_export, tmp_path, "linked", link_shard_out
        ): "which is not a file in that directory",
        _edited(tiny_llama_export, tmp_path, "badname", bad_name): "is not a model name",
        _edited(tiny_llama_export, tmp_path, "dotname", dot_name): "is not a model name",
        _edited(
            tiny_llama_export, tmp_path, "tokout", tokenizer_out
        ): "which is not a file in that directory",
        _edited(tiny_llama_export, tmp_path, "notok", no_tokenizer): "tokenizer.file is None, not a file",
    }
    for directory, reason in cases.items():
        with pytest.raises(SiteError, match=re.escape(reason)):
            ServedModel.load(directory)
    # The command says it in one line (each run costs an interpreter start: a few of the cases).
    for directory in (tmp_path / "missing", garbled, tmp_path / "truncated", tmp_path / "linked"):
        code, stderr = _signal(directory)
        assert code == 1 and stderr.startswith("ai4all signal: error: --model-dir "), (directory, stderr)
        assert cases[directory] in stderr and "Traceback" not in stderr and len(stderr.splitlines()) == 1

    code, stderr = _signal(tiny_llama_export, _edited(tiny_llama_export, tmp_path, "twin", lambda m, d: None))
    assert code == 1 and "two --model-dir directories export the model" in stderr, stderr


def test_a_bad_pow_bits_setting_is_refused(tiny_llama_export: Path) -> None:
    result = run_cli(["signal", "--port", "1"], env={"AI4ALL_LEDGER_POW_BITS": "lots"}, timeout=60)
    assert result.returncode == 1 and "AI4ALL_LEDGER_POW_BITS" in result.stderr, result.stderr


# --- ICE settings for the pages (--ice-server, --ice-username, --ice-credential, --ice-any-address) -------


def test_config_carries_the_ice_settings_it_is_given() -> None:
    ice = IceSettings(("stun:stun.example.org", "turns:turn.example.org:5349"), "user", "pass word", False)
    node = SignalingNode(NodeConfig(node_id="n"))
    with TestClient(create_app(node, browser_site(node, ice=ice))) as client:
        body = client.get("/v1/config").json()
        html = client.get("/chat").text
    assert body["ice"] == {
        "servers": [
            {"urls": ["stun:stun.example.org"]},
            {"urls": ["turns:turn.example.org:5349"], "username": "user", "credential": "pass word"},
        ],
        "loopback_only": False,
    }
    match = CONFIG_RE.search(html)
    assert match is not None and json.loads(match.group(1))["ice"] == body["ice"]


def test_the_ice_flags_reach_the_page_config() -> None:
    port = free_port()
    args = [sys.executable, "-m", "python_peer.cli", "signal", "--port", str(port), "--node-id", "ice"]
    args += ["--ice-server", "stun:192.0.2.1:3478", "--ice-server", "turn:turn.example.org?transport=tcp"]
    args += ["--ice-username", "mesh", "--ice-credential", "hunter2", "--ice-any-address"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the node did not start: {proc.communicate(timeout=5)[0][-2000:]}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/v1/config")
                body = json.loads(connection.getresponse().read())
                connection.close()
                break
            except (ConnectionError, OSError):
                time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert body["ice"] == {
        "servers": [
            {"urls": ["stun:192.0.2.1:3478"]},
            {"urls": ["turn:turn.example.org?transport=tcp"], "username": "mesh", "credential": "hunter2"},
        ],
        "loopback_only": False,
    }


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--ice-server", "stun//x"], "--ice-server 'stun//x' is not a STUN or TURN URL"),
        (["--ice-server", "https://turn.example.org"], "is not a STUN or TURN URL"),
        (["--ice-server", "stun:a.example:70000"], "port 70000 is not in 1..65535"),
        (["--ice-server", "turns:turn.example.org"], "a turn: or turns: server needs --ice-username and"),
        (
            ["--ice-server", "turn:t.example", "--ice-credential", "c"],
            "needs --ice-username and --ice-credential",
        ),
        (["--ice-username", "u", "--ice-credential", "c"], "no --ice-server names one"),
    ],
)
def test_bad_ice_flags_are_refused_at_start(flags: list[str], reason: str) -> None:
    result = run_cli(["signal", "--port", "1", *flags], timeout=60)
    stderr = result.stderr.strip()
    assert result.returncode == 1 and stderr.startswith("ai4all signal: error: "), stderr
    assert reason in stderr and "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
