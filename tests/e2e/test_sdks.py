"""The official openai and anthropic SDKs against a running gateway (a real process on loopback)."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.harness import PROVIDER_SECRET, GatewayProc, MockProvider, base_config, http_json, write_config


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, mock: MockProvider) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("e2e")
    proc = GatewayProc(write_config(tmp, base_config(mock.url)))
    yield proc
    proc.stop()


@pytest.fixture
def oai(gw: GatewayProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-demo", max_retries=0)


@pytest.fixture
def claude(gw: GatewayProc) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="sk-demo", max_retries=0)


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Say hello"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_chat_completion(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
    resp = raw.parse()
    assert resp.choices[0].message.content
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    assert raw.headers["x-gateway-model"] == "gpt-4o"
    assert raw.headers["x-gateway-route"] == "default"
    assert float(raw.headers["x-gateway-cost-usd"]) > 0
    assert raw.headers["x-request-id"]


def test_chat_stream_hides_usage_unless_asked(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=4, stream=True))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "length"
    with_usage = list(
        oai.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens == 4
    assert with_usage[-1].choices == []


def test_chat_n_tools_response_format_stop(oai: openai.OpenAI) -> None:
    many = oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, n=2, max_tokens=3)
    assert len(many.choices) == 2
    tool = oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=TOOLS, max_tokens=20)
    assert tool.choices[0].finish_reason == "tool_calls"
    assert tool.choices[0].message.tool_calls[0].function.name == "get_weather"
    rf = oai.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, response_format={"type": "json_object"}, max_tokens=10
    )
    assert rf.choices[0].message.content.startswith("{")
    stopped = oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, stop=["of"], max_tokens=10)
    assert stopped.choices[0].finish_reason == "stop"


def test_completions_embeddings_models(oai: openai.OpenAI) -> None:
    comp = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon", max_tokens=3)
    assert comp.choices[0].text
    emb = oai.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    ids = {m.id for m in oai.models.list()}
    assert {"gpt-4o", "claude-sonnet", "text-embedding-3-small"} <= ids


def test_models_list_only_what_the_team_may_use(gw: GatewayProc) -> None:
    other = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-other", max_retries=0)
    assert {m.id for m in other.models.list()} == {"gpt-4o-mini"}
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model="gpt-4o", messages=MESSAGES)


def test_openai_sdk_to_claude_model(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model="claude-sonnet", messages=MESSAGES, max_tokens=6)
    assert resp.choices[0].message.content and resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 6
    tool = oai.chat.completions.create(model="claude-sonnet", messages=MESSAGES, tools=TOOLS, max_tokens=30)
    assert tool.choices[0].message.tool_calls[0].function.name == "get_weather"
    chunks = list(
        oai.chat.completions.create(
            model="claude-sonnet",
            messages=MESSAGES,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_anthropic_sdk_messages(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="claude-sonnet", max_tokens=5, system="be brief", messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.content[0].type == "text" and msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == 5
    with claude.messages.stream(
        model="claude-sonnet", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens == 5


def test_anthropic_sdk_to_openai_model(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(model="gpt-4o", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].type == "text" and msg.usage.output_tokens == 5
    tool = claude.messages.create(
        model="gpt-4o",
        max_tokens=50,
        messages=[{"role": "user", "content": "weather?"}],
        tools=[
            {"name": "get_weather", "description": "w", "input_schema": {"type": "object", "properties": {}}}
        ],
    )
    assert tool.stop_reason == "tool_use" and tool.content[-1].type == "tool_use"
    with claude.messages.stream(
        model="gpt-4o", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.usage.output_tokens == 4


def test_azure_deployment(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model="azure-gpt", messages=MESSAGES, max_tokens=3)
    assert resp.usage is not None and resp.usage.completion_tokens == 3


def test_sdk_typed_errors(gw: GatewayProc, oai: openai.OpenAI) -> None:
    bad = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.NotFoundError) as nf:
        oai.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert nf.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as br:
        oai.chat.completions.create(model="gpt-4o", messages="not a list")  # type: ignore[arg-type]
    assert br.value.body["param"] == "messages"  # type: ignore[index]
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"x-mock-status": "429"})
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"x-mock-status": "500"})
    claude_bad = anthropic.Anthropic(base_url=gw.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        claude_bad.messages.create(
            model="claude-sonnet", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    claude = anthropic.Anthropic(base_url=gw.url, api_key="sk-demo", max_retries=0)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        claude.messages.create(
            model="claude-sonnet",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-mock-status": "529"},
        )
    assert overloaded.value.status_code == 529


def test_cut_stream_raises_in_the_sdk(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    # Chunk pacing makes the first bytes reach the client before the upstream cuts the stream.
    cut = {"x-mock-cut-after": "3", "x-mock-chunk-delay-ms": "5"}
    stream = oai.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=10, stream=True, extra_headers=cut
    )
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.append(chunk)
    assert received, "the client saw the start of the answer before the error event"
    with (
        pytest.raises(anthropic.APIStatusError),
        claude.messages.stream(
            model="claude-sonnet",
            max_tokens=10,
            messages=[{"role": "user", "content": "x"}],
            extra_headers=cut,
        ) as s,
    ):
        list(s.text_stream)


def test_provider_key_is_the_gateways(gw: GatewayProc, mock: MockProvider, oai: openai.OpenAI) -> None:
    oai.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        max_tokens=2,
        extra_headers={"x-request-id": "req-provider-key-check"},
    )
    _, stats, _ = http_json("GET", f"{mock.url}/_mock/stats")
    assert stats["last_auth"] == f"Bearer {PROVIDER_SECRET}"
    assert "sk-demo" not in str(stats["last_headers"])


def test_unknown_fields_pass_through(oai: openai.OpenAI, mock: MockProvider) -> None:
    oai.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=2, extra_body={"brand_new_param": {"x": 1}, "top_k": 3}
    )
    body = http_json("GET", f"{mock.url}/_mock/stats")[1]["last_body"]
    assert body["brand_new_param"] == {"x": 1} and body["top_k"] == 3
    assert body["model"] == "mock-gpt"
