"""Several models on one mesh (issue 14, point 4), driven through the documented interfaces only.

One signaling node and three ``ai4all peer`` processes serving two tiny models of two families (a Llama
cut 0-1,1-3,3-4 and a Qwen2 cut 0-2,2-4): the API peer serves a span of both (``--model L --span 0-1
--model Q --span 0-2``), the second peer serves the rest of the Qwen2 and the middle of the Llama, the
third the Llama's last shard. The official ``openai`` client lists both models with their coverage and
chats with each; replies equal each model's ``LocalChain`` token for token. Attacks speak the signaling
protocol (docs/signaling.md) over a raw websocket: throwaway model names by the hundred, and a model
nobody holds files of, never make ``/v1/models`` unbounded nor list a model as chat-able.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from python_peer.chain import LocalChain
from python_peer.core.canonical import Announcement, ServedSpan
from python_peer.core.manifest import load_manifest
from python_peer.core.model_summary import MAX_MODELS
from python_peer.generate import SamplingParams, generate
from python_peer.tokenizer import ModelTokenizer
from tests.support.openai_errors import assert_openai_error
from tests.support.procs import Node, PeerProc, run_cli
from tests.support.raw_signaling import raw_peer

pytestmark = pytest.mark.timeout(240)

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tiny_qwen_export(tiny_model_factory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2 exported in fp32 with spans 0-2,2-4: a second family, under its own name."""
    from exporter import pipeline, source
    from python_peer.core.spans import parse_spans

    out = tmp_path_factory.mktemp("tiny-qwen-export") / "model"
    pipeline.run_export(
        pipeline.ExportRequest(
            source.resolve(str(tiny_model_factory("qwen2"))), out, spans=tuple(parse_spans("0-2,2-4"))
        )
    )
    return out


@dataclass
class TwoModels:
    node: Node
    peers: list[PeerProc]
    dirs: dict[str, Path]  # model name -> export
    url: str  # the API's base URL, ending in /v1

    @property
    def names(self) -> list[str]:
        return list(self.dirs)


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_export: Path, tiny_qwen_export: Path
) -> Iterator[TwoModels]:
    tmp = tmp_path_factory.mktemp("two-models")
    llama, qwen = load_manifest(tiny_llama_export).name, load_manifest(tiny_qwen_export).name
    assert llama != qwen
    node = Node("signal", tmp)
    peers: list[PeerProc] = []
    try:
        node.wait()
        api = ["--api-port", "0", "--api-rate", "1000", "--api-burst", "1000"]
        both = ["--model", str(tiny_qwen_export), "--span"]
        peers.append(
            PeerProc("both-a", tmp, tiny_llama_export, [node.url], span="0-1", extra=[*both, "0-2", *api])
        )
        peers.append(PeerProc("both-b", tmp, tiny_llama_export, [node.url], span="1-3", extra=[*both, "2-4"]))
        peers.append(PeerProc("llama-c", tmp, tiny_llama_export, [node.url], span="3-4"))
        for peer in peers:
            peer.wait()
        url = peers[0].wait_api() + "/v1"
        yield TwoModels(node, peers, {llama: tiny_llama_export, qwen: tiny_qwen_export}, url)
    finally:
        statuses = {}
        for peer in peers:
            with contextlib.suppress(AssertionError):
                statuses[peer.name] = peer.stop()
        node.stop()
    assert statuses.get("both-a") == 0, peers[0].tail()


def _models(mesh: TwoModels) -> dict[str, dict]:
    response = httpx.get(f"{mesh.url}/models", trust_env=False, timeout=20)
    assert response.status_code == 200, response.text
    return {card["id"]: card for card in response.json()["data"]}


def _until_listed(mesh: TwoModels, names: set[str], timeout: float = 30.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        cards = _models(mesh)
        if names <= set(cards) and all(cards[n]["chat"] for n in mesh.names):
            return cards
        assert time.monotonic() < deadline, cards
        time.sleep(0.2)


def test_one_peer_announces_a_span_of_each_of_its_models(mesh: TwoModels) -> None:
    llama, qwen = mesh.names
    log = mesh.peers[0].log.read_text()
    assert f"serves {llama} blocks 0-1" in log and f"also serves {qwen} blocks 0-2" in log
    # one identity, one announcement listing both spans
    entries = {e["peer_id"]: e for e in mesh.node.directory()["entries"]}
    served = {(s["model"], s["start"], s["end"]) for s in entries[mesh.peers[0].peer_id]["serves"]}
    assert served == {(llama, 0, 1), (qwen, 0, 2)}
    # ai4all status says so too
    result = run_cli(["status", "--data-dir", str(mesh.peers[0].data_dir), "--json"], timeout=60)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert (status["model"], status["span"]) == (llama, "0-1")
    assert [(m["model"], m["span"]) for m in status["more_models"]] == [(qwen, "0-2")]
    text = run_cli(["status", "--data-dir", str(mesh.peers[0].data_dir)], timeout=60)
    assert f"{qwen} blocks 0-2" in text.stdout, text.stdout


def test_models_lists_both_with_their_coverage(mesh: TwoModels) -> None:
    llama, qwen = mesh.names
    cards = _until_listed(mesh, {llama, qwen})
    assert cards[llama]["coverage"] == {
        "blocks": 4,
        "covered_blocks": 4,
        "servable": True,
        "peers": 3,
        "spans": [
            {"start": 0, "end": 1, "peers": 1},
            {"start": 1, "end": 3, "peers": 1},
            {"start": 3, "end": 4, "peers": 1},
        ],
    }
    assert cards[qwen]["coverage"] == {
        "blocks": 4,
        "covered_blocks": 4,
        "servable": True,
        "peers": 2,
        "spans": [{"start": 0, "end": 2, "peers": 1}, {"start": 2, "end": 4, "peers": 1}],
    }
    assert cards[llama]["chat"] and cards[qwen]["chat"]
    with openai.OpenAI(base_url=mesh.url, api_key="x", max_retries=0, timeout=60) as client:
        assert {m.id for m in client.models.list()} >= {llama, qwen}
        assert client.models.retrieve(qwen).id == qwen


@pytest.mark.parametrize("which", [0, 1])
def test_the_openai_client_chats_with_each_model(mesh: TwoModels, which: int) -> None:
    name = mesh.names[which]
    model_dir = mesh.dirs[name]
    chain = LocalChain(model_dir)
    tokenizer = ModelTokenizer(model_dir, chain.manifest)
    ids = tokenizer.encode(tokenizer.render_chat([dict(m) for m in MESSAGES]))
    expected = generate(chain, tokenizer, ids, SamplingParams(max_tokens=12))
    _until_listed(mesh, set(mesh.names))
    with openai.OpenAI(base_url=mesh.url, api_key="x", max_retries=0, timeout=60) as client:
        reply = client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=12, temperature=0)
    assert reply.model == name
    assert reply.choices[0].message.content == expected.text
    assert reply.usage is not None and reply.usage.completion_tokens == len(expected.token_ids)


def test_an_unknown_model_gets_openais_404(mesh: TwoModels) -> None:
    body = {"model": "no-such-model", "messages": MESSAGES, "max_tokens": 2}
    for stream in (False, True):
        response = httpx.post(
            f"{mesh.url}/chat/completions", json={**body, "stream": stream}, trust_env=False
        )
        error = assert_openai_error(response, 404, "model_not_found")
        assert error["param"] == "model"
    assert_openai_error(
        httpx.get(f"{mesh.url}/models/no-such-model", trust_env=False), 404, "model_not_found"
    )
    with (
        openai.OpenAI(base_url=mesh.url, api_key="x", max_retries=0, timeout=60) as client,
        pytest.raises(openai.NotFoundError),
    ):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=2)


async def test_throwaway_models_stay_bounded_and_not_chatable(mesh: TwoModels) -> None:
    """Three raw peers announce 32 throwaway names each (96 in all, over ``MAX_MODELS``) that they serve
    no file of. /v1/models stays within bounds, keeps the two real models chat-able, lists no model
    without files here as chat-able, and chatting with one is OpenAI's 404."""
    llama, qwen = mesh.names
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(trust_env=False, timeout=20) as http:
        raws = [await stack.enter_async_context(raw_peer(mesh.node.url)) for _ in range(3)]
        for i, peer in enumerate(raws):
            now = time.time_ns() // 1_000_000
            serves = tuple(ServedSpan(f"junk-{i}-{n}", 0, 64) for n in range(32))
            body = Announcement(
                peer_id=peer.identity.peer_id,
                kind="native",
                seq=now,
                issued_ms=now,
                expires_ms=now + 60_000,
                serves=serves,
            ).to_dict()
            assert (await peer.announce(body))["type"] == "announced"
        deadline = time.monotonic() + 10
        while True:  # a node answers from a summary at most a second old
            reply = await raws[0].ask({"type": "models", "limit": MAX_MODELS})
            assert reply["type"] == "model_list", reply
            if reply["truncated"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert reply["truncated"] is True
        assert len(reply["models"]) == MAX_MODELS
        # the models served by several peers come first: throwaway names cannot push them out
        assert {m["model"] for m in reply["models"][:2]} == {llama, qwen}
        response = await http.get(f"{mesh.url}/models")
        cards = {card["id"]: card for card in response.json()["data"]}
        assert len(cards) <= MAX_MODELS + 2
        assert cards[llama]["chat"] and cards[qwen]["chat"]
        junk = [card for name, card in cards.items() if name.startswith("junk-")]
        assert junk and not any(card["chat"] for card in junk)
        for card in junk:
            assert card["coverage"]["blocks"] is None and card["coverage"]["servable"] is None
            assert card["coverage"]["peers"] == 1
        response = await http.post(
            f"{mesh.url}/chat/completions",
            json={"model": junk[0]["id"], "messages": MESSAGES, "max_tokens": 2},
        )
        assert "chat false" in assert_openai_error(response, 404, "model_not_found")["message"]
        card = await http.get(f"{mesh.url}/models/{junk[0]['id']}")
        assert card.status_code == 200 and card.json()["chat"] is False
        # the client may ask for fewer; the node refuses more than its bound
        small = await raws[0].ask({"type": "models", "limit": 3})
        assert len(small["models"]) == 3 and small["truncated"] is True
        refused = await raws[0].ask({"type": "models", "limit": MAX_MODELS + 1})
        assert refused["type"] == "error" and refused["code"] == "bad_message", refused


@pytest.mark.parametrize(
    ("second", "spans", "words"),
    [
        ("export", ["--span", "0-1"], "1 --span for 2 --model"),
        ("export", [], "hold the same model"),
        ("some-model-name", [], "a peer fetches one model by name and serves it alone"),
    ],
)
def test_peer_refuses_models_and_spans_that_do_not_pair(
    tmp_path: Path, tiny_llama_export: Path, second: str, spans: list[str], words: str
) -> None:
    models = [
        "--model",
        str(tiny_llama_export),
        "--model",
        str(tiny_llama_export) if second == "export" else second,
    ]
    data = ["--data-dir", str(tmp_path / "d")]
    result = run_cli(["peer", "--signal", "ws://127.0.0.1:9", *models, *spans, *data], timeout=60)
    assert result.returncode != 0
    assert words in result.stderr, result.stderr
